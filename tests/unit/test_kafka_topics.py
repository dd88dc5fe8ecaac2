"""Which topics fraudscore creates: the stream's internal terminal-events topic included."""

from __future__ import annotations

from services.common import kafka
from services.common.settings import KafkaSettings, StreamSettings


def test_all_topics_include_the_internal_terminal_events_topic() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", transactions_topic="tx")
    topics = kafka.all_topics(settings, StreamSettings())
    assert topics == ["tx", "fraud-labels", "transactions.dlq", "scores", "tx.terminal-events"]
    # The same name the worker consumes.
    assert StreamSettings().terminal_topic("tx") in topics


def test_an_overridden_terminal_events_topic_is_the_one_created() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    stream = StreamSettings(terminal_events_topic="internal.terminals")
    assert kafka.all_topics(settings, stream)[-1] == "internal.terminals"
