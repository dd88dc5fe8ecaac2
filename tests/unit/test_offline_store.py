"""Offline card-state parts: same-millisecond states of a card get increasing stamps."""

from __future__ import annotations

from services.common import features, offline_store
from services.common.features import CardState, apply_transaction

T0 = 1_767_225_600_000


def test_same_millisecond_states_are_ordered_by_stamp() -> None:
    state = CardState()
    rows = []
    for tid, card, ms in [("a", "c1", T0), ("b", "c1", T0), ("c", "c2", T0), ("d", "c1", T0 + 1)]:
        apply_transaction(state, tid, ms, 1.0, 300_000)
        rows.append((card, ms, features.to_row(state)))
    table = offline_store.card_state_table(rows)
    stamps = [ts.value // 1000 for ts in table["event_timestamp"].to_pandas()]
    assert stamps == [T0 * 1000, T0 * 1000 + 1, T0 * 1000, (T0 + 1) * 1000]
