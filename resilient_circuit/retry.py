"""Retry with backoff: thin sync and async drivers around ``_retry_engine.RetryEngine``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from resilient_circuit import _testing
from resilient_circuit._machine import as_timedelta
from resilient_circuit._retry_engine import (
    Call,
    DelayStrategy,
    GiveUp,
    GiveUpEvent,
    RetryEngine,
    RetryEvent,
)
from resilient_circuit.instrumentation import _events
from resilient_circuit.instrumentation.hooks import Hook, checked_hooks
from resilient_circuit.policy import ProtectionPolicy

if TYPE_CHECKING:
    from resilient_circuit.retry_budget import RetryBudget

__all__ = (
    "DelayStrategy",
    "GiveUpEvent",
    "GiveUpHook",
    "RetryEvent",
    "RetryHook",
    "RetryWithBackoffPolicy",
    "async_sleep",
    "sleep",
)

F = TypeVar("F", bound=Callable[..., Any])

#: What a sync retry sleeps with unless the policy was given ``sleep=``; looked up at
#: each wait, so tests can patch ``resilient_circuit.retry.sleep`` (as with 0.4.5).
sleep: Callable[[float], object] = time.sleep
#: The same for coroutine functions: ``resilient_circuit.retry.async_sleep``.
async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep


class RetryHook(Protocol):
    """Called before each retry's wait (may be ``async def`` for coroutine functions)."""

    def __call__(self, event: RetryEvent) -> object: ...


class GiveUpHook(Protocol):
    """Called once when the policy stops retrying a handled failure."""

    def __call__(self, event: GiveUpEvent) -> object: ...


def _handle_all(exc: Exception) -> bool:
    return True


def _raise(step: GiveUp) -> Any:
    error = step.error
    if error is None:
        return step.result
    cause = step.cause
    if cause is None:
        raise error
    current = None if step.event is None else step.event.exception
    if current is not None and current is not cause:
        # The error that ended the retries (say the breaker's rejection) stays
        # reachable as the context; the cause is the function's own last error.
        error.__context__ = current
    raise error from cause


class RetryWithBackoffPolicy(ProtectionPolicy):
    """Call again after handled exceptions, up to ``max_retries`` more times.

    When every attempt failed, raises ``RetryLimitReached`` chained ``from`` the last
    error the function raised; an exception ``should_handle`` declines propagates at
    once, unchanged. There is no wait after the last attempt, and a zero delay never
    calls ``sleep``. See the README for ``max_duration``, ``retry_if_result``,
    ``retry_after``, the hooks and ``budget``.
    """

    def __init__(
        self,
        *,
        backoff: DelayStrategy | None = None,
        max_retries: int = 3,
        should_handle: Callable[[Exception], bool] = _handle_all,
        on_retry: RetryHook | None = None,
        on_give_up: GiveUpHook | None = None,
        max_duration: timedelta | None = None,
        retry_if_result: Callable[[Any], bool] | None = None,
        budget: RetryBudget | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise TypeError(f"`max_retries` must be an int, got {type(max_retries).__name__}")
        if max_retries < 0:
            raise ValueError(f"`max_retries` must be >= 0, got {max_retries}")
        if backoff is not None and not callable(getattr(backoff, "for_attempt", None)):
            raise TypeError("`backoff` must have a for_attempt(attempt) method")
        if not callable(should_handle):
            raise TypeError("`should_handle` must be callable")
        if not callable(clock):
            raise TypeError("`clock` must be callable")
        for name, value in (
            ("on_retry", on_retry),
            ("on_give_up", on_give_up),
            ("retry_if_result", retry_if_result),
            ("sleep", sleep),
            ("async_sleep", async_sleep),
        ):
            if value is not None and not callable(value):
                raise TypeError(f"`{name}` must be callable or None")
        if max_duration is not None:
            max_duration = as_timedelta(max_duration, "max_duration")
            if max_duration <= timedelta(0):
                raise ValueError(f"`max_duration` must be positive, got {max_duration}")
        if budget is not None:
            from resilient_circuit.retry_budget import RetryBudget

            if not isinstance(budget, RetryBudget):
                raise TypeError(f"`budget` must be a RetryBudget, got {type(budget).__name__}")
        self.backoff = backoff
        self.max_retries = max_retries
        self.max_attempts = max_retries + 1
        self.should_handle = should_handle
        self.on_retry = on_retry
        self.on_give_up = on_give_up
        self.max_duration = max_duration
        self.retry_if_result = retry_if_result
        self.budget = budget
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._clock = clock
        #: This policy's own hooks (the process-wide ones run after them).
        self.hooks = checked_hooks(hooks)
        self._engine = RetryEngine(
            backoff=backoff,
            max_attempts=self.max_attempts,
            should_handle=should_handle,
            max_duration=None if max_duration is None else max_duration.total_seconds(),
            handles_everything=should_handle is _handle_all,
        )

    def __call__(self, func: F) -> F:
        """Wrap ``func`` (sync or ``async def``) in this retry policy."""
        if inspect.iscoroutinefunction(func):
            return cast(F, self._wrap_async(func))
        return cast(F, self._wrap_sync(func))

    # The first attempt runs in the wrapper itself and costs as little as a decorator
    # can: everything else (the engine, the clock, hooks, the budget's withdrawal)
    # happens only once an attempt failed.

    def _options(
        self,
    ) -> tuple[bool, Callable[[], float], Callable[[], None] | None, Callable[[Any], Any] | None]:
        """What a wrapper reads once, when it is made: whether calls are timed, the clock,
        the budget's deposit and ``retry_if_result``."""
        deposit = None if self.budget is None else self.budget.deposit
        return self.max_duration is not None, self._clock, deposit, self.retry_if_result

    def _wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        timed, clock, deposit, check = self._options()
        drive = self._drive_sync
        if deposit is None and not timed and check is None:

            @functools.wraps(func)
            def plain(*args: Any, **kwargs: Any) -> Any:
                # 0.4.5's options only: nothing but the call on the way to success.
                try:
                    return func(*args, **kwargs)
                except Exception as exc:
                    error: Exception = exc
                return drive(functools.partial(func, *args, **kwargs), 0.0, error, None)

            return plain

        @functools.wraps(func)
        def retrying(*args: Any, **kwargs: Any) -> Any:
            if deposit is not None:
                deposit()
            started = clock() if timed else 0.0
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                error: Exception = exc
            else:
                if check is None or not check(result):
                    return result
                return drive(functools.partial(func, *args, **kwargs), started, None, result)
            return drive(functools.partial(func, *args, **kwargs), started, error, None)

        return retrying

    def _drive_sync(
        self, again: functools.partial[Any], started: float, error: Exception | None, result: Any
    ) -> Any:
        timed, clock, _, check = self._options()  # the clock is read only when timed
        engine, budget, call = self._engine, self.budget, Call(started)
        while True:
            step = engine.decide(call, error, result, clock() if timed else 0.0)
            if type(step) is float and budget is not None and not budget.withdraw():
                step = engine.refused_by_budget(call, error, result)
            self._announce(again.func, call, step, error, result)
            if isinstance(step, GiveUp):
                return _raise(step)
            if step > 0 and not _testing.is_testing():
                (self._sleep or sleep)(step)
            error = None
            try:
                result = again()
            except Exception as exc:
                error, result = exc, None
            else:
                if check is None or not check(result):
                    return result

    def _wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        timed, clock, deposit, check = self._options()
        drive = self._drive_async
        if deposit is None and not timed and check is None:

            @functools.wraps(func)
            async def plain(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await func(*args, **kwargs)
                except Exception as exc:
                    error: Exception = exc
                return await drive(functools.partial(func, *args, **kwargs), 0.0, error, None)

            return plain

        @functools.wraps(func)
        async def retrying(*args: Any, **kwargs: Any) -> Any:
            if deposit is not None:
                deposit()
            started = clock() if timed else 0.0
            try:
                result = await func(*args, **kwargs)
            except Exception as exc:
                error: Exception = exc
            else:
                if check is None or not await _verdict(check(result)):
                    return result
                return await drive(functools.partial(func, *args, **kwargs), started, None, result)
            return await drive(functools.partial(func, *args, **kwargs), started, error, None)

        return retrying

    async def _drive_async(
        self,
        again: functools.partial[Awaitable[Any]],
        started: float,
        error: Exception | None,
        result: Any,
    ) -> Any:
        timed, clock, _, check = self._options()  # the clock is read only when timed
        engine, budget, call = self._engine, self.budget, Call(started)
        while True:
            step = engine.decide(call, error, result, clock() if timed else 0.0)
            if type(step) is float and budget is not None and not await budget.withdraw_async():
                step = engine.refused_by_budget(call, error, result)
            # A policy's on_retry/on_give_up may be ``async def`` for coroutine functions.
            await _maybe_await(self._announce(again.func, call, step, error, result))
            if isinstance(step, GiveUp):
                return _raise(step)
            if step > 0 and not _testing.is_testing():
                await (self._async_sleep or async_sleep)(step)
            error = None
            try:
                result = await again()
            except Exception as exc:
                error, result = exc, None
            else:
                if check is None or not await _verdict(check(result)):
                    return result

    def _announce(
        self,
        func: Callable[..., Any],
        call: Call,
        step: float | GiveUp,
        error: Exception | None,
        result: Any,
    ) -> object:
        """Report ``step`` to the hooks, then to on_retry/on_give_up; returns what that
        callback returned (an awaitable, for an ``async def`` one)."""
        if isinstance(step, GiveUp):
            event = step.event
            if event is None:  # should_handle declined the error: nobody is told
                return None
            _events.gave_up(self.hooks, func, event.attempts, event.reason, error)
            return None if self.on_give_up is None else self.on_give_up(event)
        _events.retried(self.hooks, func, call.attempts - 1, step, error)
        if self.on_retry is None:
            return None
        return self.on_retry(RetryEvent(call.attempts - 1, step, error, result))


async def _verdict(value: object) -> bool:
    # retry_if_result may be an ``async def`` predicate for coroutine functions.
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value
