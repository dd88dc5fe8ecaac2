"""GuardedPath: timeouts and errors open the breaker; an open breaker refuses at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from services.scorer.breaker import BreakerOpen, BudgetExceeded, GuardedPath


@pytest.fixture()
def states() -> list[str]:
    return []


@pytest.fixture()
def guarded(states: list[str]) -> Iterator[GuardedPath]:
    path = GuardedPath(fail_max=3, reset_timeout_s=0.2, max_workers=4, on_state=states.append)
    yield path
    path.shutdown()


def boom() -> int:
    raise ConnectionError("redis down")


def test_success_returns_the_value(guarded: GuardedPath) -> None:
    assert guarded.run(lambda: 7, timeout_s=1.0) == 7
    assert guarded.state == "closed"


def test_consecutive_errors_open_the_breaker_and_then_it_refuses_without_calling(
    guarded: GuardedPath, states: list[str]
) -> None:
    for _ in range(3):
        with pytest.raises(ConnectionError):
            guarded.run(boom, timeout_s=1.0)
    assert guarded.state == "open"
    assert states == ["open"]
    called = threading.Event()
    with pytest.raises(BreakerOpen):
        guarded.run(lambda: called.set(), timeout_s=1.0)
    assert not called.is_set()


def test_a_success_resets_the_failure_count(guarded: GuardedPath) -> None:
    for _ in range(2):
        with pytest.raises(ConnectionError):
            guarded.run(boom, timeout_s=1.0)
    guarded.run(lambda: 1, timeout_s=1.0)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            guarded.run(boom, timeout_s=1.0)
    assert guarded.state == "closed"


def test_timeouts_count_as_failures_and_return_within_the_budget(guarded: GuardedPath) -> None:
    release = threading.Event()
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(BudgetExceeded):
            guarded.run(lambda: release.wait(5), timeout_s=0.02)
        assert time.perf_counter() - started < 0.5
    release.set()
    assert guarded.state == "open"


def test_timeouts_set_by_the_clients_deadline_are_not_counted(guarded: GuardedPath) -> None:
    release = threading.Event()
    for _ in range(4):
        with pytest.raises(BudgetExceeded):
            guarded.run(lambda: release.wait(5), timeout_s=0.01, client_bound=True)
    release.set()
    assert guarded.state == "closed"


def test_half_open_trial_success_closes_the_breaker(
    guarded: GuardedPath, states: list[str]
) -> None:
    for _ in range(3):
        with pytest.raises(ConnectionError):
            guarded.run(boom, timeout_s=1.0)
    time.sleep(0.25)
    assert guarded.run(lambda: 5, timeout_s=1.0) == 5
    assert states == ["open", "half-open", "closed"]


def test_closed_breaker_runs_calls_concurrently(guarded: GuardedPath) -> None:
    # pybreaker alone would hold its lock across the call and run these one at a time.
    barrier = threading.Barrier(3, timeout=2)
    results: list[int] = []

    def call() -> None:
        results.append(guarded.run(lambda: barrier.wait() + 1, timeout_s=2.0))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3


def test_inline_runs_on_the_callers_thread(guarded: GuardedPath) -> None:
    assert guarded.run(lambda: threading.current_thread().name, 1.0, inline=True) == (
        threading.current_thread().name
    )
    assert guarded.run(lambda: threading.current_thread().name, 1.0).startswith("guarded")


def test_an_inline_answer_later_than_the_budget_is_a_timeout_and_counts(
    guarded: GuardedPath,
) -> None:
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            guarded.run(lambda: time.sleep(0.03), timeout_s=0.01, inline=True)
    assert guarded.state == "open"
    with pytest.raises(BreakerOpen):
        guarded.run(lambda: 1, timeout_s=1.0, inline=True)


def test_inline_errors_count_and_a_late_client_bound_answer_does_not(
    guarded: GuardedPath,
) -> None:
    for _ in range(4):
        with pytest.raises(BudgetExceeded):
            guarded.run(lambda: time.sleep(0.02), 0.001, client_bound=True, inline=True)
    assert guarded.state == "closed"
    for _ in range(3):
        with pytest.raises(ConnectionError):
            guarded.run(boom, 1.0, inline=True)
    assert guarded.state == "open"
    time.sleep(0.25)
    assert guarded.run(lambda: 7, 1.0, inline=True) == 7  # the half-open trial, inline too
    assert guarded.state == "closed"
