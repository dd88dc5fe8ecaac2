"""`bench stream` stops with a finding, instead of waiting out its timeout, once every backlog
event was handled but some were not counted (a worker dropping events as late)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.bench import stream


def counters(**values: float) -> Callable[[str], float]:
    named = {key.replace("__", ":"): value for key, value in values.items()}
    return lambda key: named.get(key, 0.0)


def test_events_dropped_at_their_terminal_are_reported_once_all_are_handled() -> None:
    delta = counters(
        transactions_total__applied=100,
        terminal_events_total__applied=97,
        terminal_events_total__late=3,
    )
    with pytest.raises(RuntimeError, match="0 were not counted at their card and 3 not at"):
        stream._not_counted(delta, 100)


def test_a_backlog_still_in_progress_or_fully_counted_is_not_a_finding() -> None:
    in_progress = counters(
        transactions_total__applied=100,
        terminal_events_total__applied=50,
        terminal_events_total__late=3,
    )
    stream._not_counted(in_progress, 100)
    counted = counters(transactions_total__applied=100, terminal_events_total__applied=100)
    stream._not_counted(counted, 100)
