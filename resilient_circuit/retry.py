"""Retry with backoff: a small decision engine with thin sync and async drivers."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from resilient_circuit import _testing
from resilient_circuit.exceptions import RetryLimitReached
from resilient_circuit.policy import ProtectionPolicy

__all__ = ("RetryEvent", "RetryHook", "RetryWithBackoffPolicy")

F = TypeVar("F", bound=Callable[..., Any])


class DelayStrategy(Protocol):
    """Anything with ``for_attempt(n) -> seconds``, like ExponentialDelay and FixedDelay."""

    def for_attempt(self, attempt: int) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One failed attempt that will be retried after ``delay`` seconds."""

    attempt: int
    delay: float
    exception: Exception


class RetryHook(Protocol):
    """Called before each retry's wait."""

    def __call__(self, event: RetryEvent) -> None: ...


def _handle_all(exc: Exception) -> bool:
    return True


class RetryWithBackoffPolicy(ProtectionPolicy):
    """Call again after handled exceptions, up to ``max_retries`` more times.

    When every attempt failed, raises ``RetryLimitReached`` chained ``from`` the last
    error; an exception ``should_handle`` declines propagates at once, unchanged.
    There is no wait after the last attempt, and a zero delay never calls ``sleep``.
    """

    def __init__(
        self,
        *,
        backoff: DelayStrategy | None = None,
        max_retries: int = 3,
        should_handle: Callable[[Exception], bool] = _handle_all,
        on_retry: RetryHook | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise TypeError(f"`max_retries` must be an int, got {type(max_retries).__name__}")
        if max_retries < 0:
            raise ValueError(f"`max_retries` must be >= 0, got {max_retries}")
        if backoff is not None and not callable(getattr(backoff, "for_attempt", None)):
            raise TypeError("`backoff` must have a for_attempt(attempt) method")
        for name, value in (
            ("should_handle", should_handle),
            ("sleep", sleep),
            ("async_sleep", async_sleep),
        ):
            if not callable(value):
                raise TypeError(f"`{name}` must be callable")
        if on_retry is not None and not callable(on_retry):
            raise TypeError("`on_retry` must be callable or None")
        self.backoff = backoff
        self.max_retries = max_retries
        self.max_attempts = max_retries + 1
        self.should_consider_failure = should_handle
        self.on_retry = on_retry
        self._sleep = sleep
        self._async_sleep = async_sleep

    def _delay_before_retry(self, attempt: int, exc: Exception) -> float:
        """Seconds to wait after failed ``attempt``; the driver already checked it may retry."""
        delay = 0.0
        if self.backoff is not None and not _testing.is_testing():
            delay = self.backoff.for_attempt(attempt)
        if self.on_retry is not None:
            self.on_retry(RetryEvent(attempt, delay, exc))
        return delay

    def _give_up(self, attempts: int) -> RetryLimitReached:
        return RetryLimitReached(f"gave up after {attempts} attempts")

    def __call__(self, func: F) -> F:
        """Wrap ``func`` (sync or ``async def``) in this retry policy."""
        if inspect.iscoroutinefunction(func):
            return cast(F, self._wrap_async(func))
        return cast(F, self._wrap_sync(func))

    def _wrap_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        handles = self.should_consider_failure

        @functools.wraps(func)
        def retrying(*args: Any, **kwargs: Any) -> Any:
            attempt = 0
            while True:
                try:
                    return func(*args, **kwargs)
                except Exception as exc:
                    attempt += 1
                    if not handles(exc):
                        raise
                    if attempt >= self.max_attempts:
                        raise self._give_up(attempt) from exc
                    delay = self._delay_before_retry(attempt, exc)
                if delay > 0:
                    self._sleep(delay)

        return retrying

    def _wrap_async(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        handles = self.should_consider_failure

        @functools.wraps(func)
        async def retrying(*args: Any, **kwargs: Any) -> Any:
            attempt = 0
            while True:
                try:
                    return await func(*args, **kwargs)
                except Exception as exc:
                    attempt += 1
                    if not handles(exc):
                        raise
                    if attempt >= self.max_attempts:
                        raise self._give_up(attempt) from exc
                    delay = self._delay_before_retry(attempt, exc)
                if delay > 0:
                    await self._async_sleep(delay)

        return retrying
