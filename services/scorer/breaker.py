"""The circuit breaker and time budget around the feature+model path.

pybreaker's `CircuitBreaker.call` holds the breaker's lock for the whole call, which would run
one request at a time. So while the circuit is closed the work runs outside that lock and only
its outcome goes through the breaker; when it is open or half-open, pybreaker runs the (single)
trial call itself and everyone else is answered by the fallback at once.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import pybreaker

log = logging.getLogger(__name__)

T = TypeVar("T")

STATE_VALUES: dict[str, int] = {
    pybreaker.STATE_CLOSED: 0,
    pybreaker.STATE_HALF_OPEN: 1,
    pybreaker.STATE_OPEN: 2,
}


class BreakerOpen(Exception):
    """The breaker refused the call without trying it."""


class BudgetExceeded(TimeoutError):
    """The path did not finish within its budget; `client_bound` if the caller's deadline set it."""

    def __init__(self, timeout_s: float, client_bound: bool) -> None:
        super().__init__(f"no answer within {timeout_s * 1000:.1f} ms")
        self.client_bound = client_bound


class StateListener(pybreaker.CircuitBreakerListener):
    """Logs every state change and reports it to `on_state(name)`."""

    def __init__(self, on_state: Callable[[str], None]) -> None:
        self._on_state = on_state

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state is not None else "none"
        log.warning("circuit breaker %s: %s -> %s", cb.name, old, new_state.name)
        self._on_state(new_state.name)


def _ok() -> None:
    return None


def _fail(exc: BaseException) -> None:
    raise exc


class GuardedPath:
    """Runs a callable under a timeout and a circuit breaker.

    The timeout is enforced in one of two ways. By default `fn` runs on this object's own pool
    and the caller stops waiting when the budget is spent, whatever `fn` is stuck in. With
    `inline=True` `fn` runs on the caller's thread, which saves a thread hand-off (and the GIL
    convoy that comes with it under load); the caller then vouches that `fn` cannot block for
    longer than the budget (its I/O has socket timeouts within it), and an answer arriving
    after the budget is discarded as a timeout all the same.
    """

    def __init__(
        self,
        fail_max: int,
        reset_timeout_s: float,
        max_workers: int,
        on_state: Callable[[str], None] | None = None,
        name: str = "feature+model",
    ) -> None:
        listeners = [StateListener(on_state)] if on_state is not None else []
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout_s, listeners=listeners, name=name
        )
        # Its own pool: a hung Redis call occupies a worker here, never a gRPC thread.
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="guarded")
        self._probe = threading.Lock()

    @property
    def state(self) -> str:
        return str(self.breaker.current_state)

    def run(
        self,
        fn: Callable[[], T],
        timeout_s: float,
        client_bound: bool = False,
        inline: bool = False,
    ) -> T:
        """`fn()` within `timeout_s`; raises BreakerOpen, BudgetExceeded or fn's error.

        A timeout set by the caller's own short deadline (`client_bound`) says nothing about
        the backends, so it is not counted as a breaker failure.
        """
        if self.breaker.current_state == pybreaker.STATE_CLOSED:
            try:
                result = self._timed(fn, timeout_s, client_bound, inline)
            except BudgetExceeded as exc:
                if not exc.client_bound:
                    self._record(exc)
                raise
            except Exception as exc:
                self._record(exc)
                raise
            self._record(None)
            return result
        if not self._probe.acquire(blocking=False):
            raise BreakerOpen("a trial call is already under way")
        try:
            return self.breaker.call(self._timed, fn, timeout_s, client_bound, inline)
        except pybreaker.CircuitBreakerError as exc:
            raise BreakerOpen(str(exc)) from exc
        finally:
            self._probe.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _timed(
        self, fn: Callable[[], T], timeout_s: float, client_bound: bool, inline: bool = False
    ) -> T:
        if inline:
            started = time.perf_counter()
            result = fn()
            if time.perf_counter() - started > timeout_s:
                raise BudgetExceeded(timeout_s, client_bound)
            return result
        # Copy the context so spans opened inside fn nest under the caller's span.
        ctx = contextvars.copy_context()
        future: Future[T] = self._executor.submit(ctx.run, fn)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            if future.done():
                raise  # fn's own timeout (a socket timeout is a TimeoutError too)
            future.cancel()
            raise BudgetExceeded(timeout_s, client_bound) from None

    def _record(self, exc: BaseException | None) -> None:
        try:
            if exc is None:
                self.breaker.call(_ok)
            else:
                self.breaker.call(_fail, exc)
        except pybreaker.CircuitBreakerError:
            pass  # tripped now, or already opened by a concurrent call
        except Exception as recorded:
            if recorded is not exc:
                raise
