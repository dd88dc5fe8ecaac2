"""The direct Redis read path returns exactly what Feast's get_online_features returns."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest
import redis
from feast.data_source import PushMode

from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.features import CardState, apply_transaction
from services.scorer.redis_reader import (
    FastFeatureReader,
    RedisOnlineReader,
    fast_client,
    parse_connection_string,
)

pytestmark = pytest.mark.integration

NOW_MS = 1_767_232_800_000


def state_with(n: int, now_ms: int = NOW_MS) -> CardState:
    state = CardState()
    for i in reversed(range(n)):
        apply_transaction(state, f"tx{i}", now_ms - (i + 1) * 61_000, 10.5 + i, 300_000)
    return state


def push(store: object, states: dict[str, CardState]) -> None:
    frame = pd.DataFrame(
        [
            {
                feast_repo.ENTITY_KEY: card,
                feast_repo.TIMESTAMP: pd.Timestamp(state.last_event_ms, unit="ms", tz="UTC"),
                **features.to_list_row(state),
            }
            for card, state in states.items()
        ]
    )
    store.push(feast_repo.PUSH_SOURCE, frame, to=PushMode.ONLINE)  # type: ignore[attr-defined]


def test_direct_read_equals_feast_online_features_for_present_and_absent_cards(
    feature_repo_dir: Path,
) -> None:
    store = feast_repo.open_store(feature_repo_dir)
    tag = uuid.uuid4().hex[:8]
    states = {f"rr-{tag}-{n}": state_with(n) for n in (1, 3, 12)}
    push(store, states)
    cards = [*states, f"rr-{tag}-absent", "", "ünïcode-卡"]

    expected = store.get_online_features(
        features=feast_repo.feature_refs(),
        entity_rows=[{feast_repo.ENTITY_KEY: c} for c in cards],
    ).to_dict()
    reader = RedisOnlineReader.from_store(store)
    rows = reader.read(feast_repo.FEATURE_VIEW, cards)

    for i, row in enumerate(rows):
        assert row == {name: expected[name][i] for name in features.STATE_COLUMNS}
    # Array fields round-trip as lists, and the states they encode are the pushed ones.
    assert rows[2]["m_cnt"] == [1] * 12
    fast = FastFeatureReader(reader)
    assert [fast.read_state(c) for c in states] == list(states.values())
    assert fast.read_states(cards[-3:]) == [None, None, None]


def test_layout_comes_from_the_registry_not_from_this_module(feature_repo_dir: Path) -> None:
    store = feast_repo.open_store(feature_repo_dir)
    by_service = RedisOnlineReader.from_store(store)
    every_view = RedisOnlineReader.from_store(store, feature_service=None)
    layout = by_service.views[feast_repo.FEATURE_VIEW]
    assert layout.features == features.STATE_COLUMNS
    assert layout.join_keys == (feast_repo.ENTITY_KEY,)
    assert every_view.views[feast_repo.FEATURE_VIEW].fields == layout.fields
    # The key is Feast's own: the hash the push wrote is found under it.
    card = f"rr-key-{uuid.uuid4().hex[:8]}"
    push(store, {card: state_with(2)})
    assert by_service.client.exists(by_service.redis_key(feast_repo.FEATURE_VIEW, card)) == 1


def test_a_refused_connection_raises_instead_of_retrying(feature_repo_dir: Path) -> None:
    store = feast_repo.open_store(feature_repo_dir)
    client = fast_client("127.0.0.1", free_port(), timeout_s=0.05)
    reader = FastFeatureReader(RedisOnlineReader.from_store(store, client=client))
    with pytest.raises(redis.ConnectionError):
        reader.read_state("card-1")
    retry = client.connection_pool.connection_kwargs["retry"]
    assert retry.get_retries() == 0


def test_feast_connection_strings_become_client_options() -> None:
    options = parse_connection_string(
        "10.0.0.5:6380,db=2,socket_timeout=2.0,socket_connect_timeout=1.0,password=p=w"
    )
    assert options == {
        "host": "10.0.0.5",
        "port": 6380,
        "db": 2,
        "socket_timeout": 2.0,
        "socket_connect_timeout": 1.0,
        "password": "p=w",
    }
