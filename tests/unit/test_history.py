"""The history builders against the plain row-built tables (`offline_store`)."""

from __future__ import annotations

import random

from services.common import features, offline_store
from services.common.features import CardState, TerminalState
from services.common.history import CardHistory, TerminalHistory

T0 = 1_767_225_600_000


def test_card_history_equals_the_rows_table_with_same_millisecond_rows() -> None:
    """Rows of one card in one millisecond, consecutive or with other cards' rows between them
    (the backfill's interleaving): the stamps count up exactly as `offline_store.stamps` does,
    no two rows of a card share one, and every column equals the plain table's."""
    rng = random.Random(7)
    history = CardHistory()
    rows: list[tuple[str, int, dict[str, object]]] = []
    states: dict[str, CardState] = {}
    now = T0
    for i in range(400):
        card = f"c{rng.randint(0, 4)}"
        now += rng.choice([0, 0, 0, 1, 250, 60_000])
        ms = now
        state = states.setdefault(card, CardState())
        features.apply_transaction(state, f"x{i}", ms, 1.0 + i, 300_000, f"t{i % 7}")
        position = history.append(card, ms, state)
        if rng.random() < 0.3:
            history.complete(position, state)
            rows.append((card, ms, features.to_list_row(state)))
        else:
            empty = {name: [] for name in features.DEDUP_COLUMNS}
            rows.append((card, ms, {**features.to_list_row(state), **empty}))
    table = history.table()
    expected = offline_store.card_state_table(rows)
    assert table.equals(expected)
    stamps = table.column("event_timestamp").to_pylist()
    assert len(set(zip(table.column("card_id").to_pylist(), stamps, strict=True))) == len(rows)


def test_terminal_history_equals_the_rows_table() -> None:
    rng = random.Random(11)
    history = TerminalHistory()
    rows: list[tuple[str, int, dict[str, object]]] = []
    states: dict[str, TerminalState] = {}
    now = T0
    for i in range(300):
        terminal = f"t{rng.randint(0, 3)}"
        now += rng.choice([0, 0, 1, 3_600_000])
        state = states.setdefault(terminal, TerminalState())
        if rng.random() < 0.2:
            features.apply_terminal_label(state, f"x{i}", now - 86_400_000, True)
        else:
            features.apply_terminal_transaction(state, now)
        state.sources[0] = i
        position = history.append(terminal, now, state)
        if rng.random() < 0.3:
            history.complete(position, state)
            rows.append((terminal, now, features.terminal_to_list_row(state)))
        else:
            empty = {name: [] for name in features.TERMINAL_DEDUP_COLUMNS}
            rows.append((terminal, now, {**features.terminal_to_list_row(state), **empty}))
    assert history.table().equals(offline_store.terminal_state_table(rows))


def test_empty_histories_are_empty_parts() -> None:
    assert CardHistory().table().equals(offline_store.CARD_STATE_SCHEMA.empty_table())
    assert TerminalHistory().table().equals(offline_store.TERMINAL_STATE_SCHEMA.empty_table())
    assert len(CardHistory()) == 0 and CardHistory().rows() == []
