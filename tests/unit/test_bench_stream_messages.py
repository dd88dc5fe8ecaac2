"""`bench stream`'s freshness load builds its messages before the clock starts and stamps
each with its event time as it publishes."""

from __future__ import annotations

from services.bench import stream
from services.proto.fraudscore.v1 import transaction_pb2
from services.stream import processor


def test_an_event_time_appended_to_a_serialized_transaction_parses_as_set() -> None:
    """The freshness load serializes its transactions ahead and appends each event time when
    it publishes: the worker must read the same transaction as one built whole."""
    whole = transaction_pb2.Transaction(
        transaction_id="x1", card_id="c1", terminal_id="t1", amount_minor=1234, currency="EUR"
    )
    without_time = whole.SerializeToString()
    for event_ms in (1_000, 1_764_000_000_123, 253_402_300_799_999):
        whole.event_time.FromMilliseconds(event_ms)
        appended = without_time + stream.event_time_field(event_ms)
        assert transaction_pb2.Transaction.FromString(appended) == whole
        parsed = processor.parse_transaction(appended)
        assert not isinstance(parsed, processor.Rejected)
        assert parsed.event_ms == event_ms
