"""What a retry policy does after each attempt, decided without any I/O.

The sync and async drivers in ``retry.py`` call the function, read the clock, sleep,
ask the retry budget and run the hooks; everything they decide in between comes
from ``RetryEngine``, so both drivers share one set of rules and tests can drive
the rules with any clock.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

from resilient_circuit.backoff import ExponentialDelay
from resilient_circuit.exceptions import ProtectedCallError, RetryLimitReached

__all__ = (
    "Call",
    "DelayStrategy",
    "GiveUp",
    "GiveUpEvent",
    "GiveUpReason",
    "RetryEngine",
    "RetryEvent",
    "retry_after_seconds",
)

GiveUpReason = Literal["attempts", "duration", "retry_after", "rejected", "budget"]


class DelayStrategy(Protocol):
    """Anything with ``for_attempt(n) -> seconds``, like ExponentialDelay and FixedDelay."""

    def for_attempt(self, attempt: int) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One failed attempt that will be retried after ``delay`` seconds.

    ``exception`` is what the attempt raised, or None when ``retry_if_result``
    asked for the retry (``result`` is then the value returned).
    """

    attempt: int
    delay: float
    exception: Exception | None
    result: Any = None


@dataclass(frozen=True, slots=True)
class GiveUpEvent:
    """The policy stopped retrying after ``attempts`` attempts, for ``reason``.

    ``exception`` is what the last attempt raised (None when it returned ``result``).
    """

    attempts: int
    reason: GiveUpReason
    exception: Exception | None
    result: Any = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop: raise ``error`` (chained ``from cause`` when a cause is set), or return ``result``."""

    error: Exception | None
    cause: Exception | None
    result: Any
    event: GiveUpEvent | None  # None when ``should_handle`` declined the error


class Call:
    """What the engine remembers about one call of the protected function."""

    __slots__ = ("attempts", "last_error", "previous_delay", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.attempts = 1
        self.previous_delay: float | None = None
        # The last error the protected function itself raised: a breaker's rejection
        # is not one, and must never hide it from the caller.
        self.last_error: Exception | None = None


def retry_after_seconds(exc: Exception) -> float | None:
    """The wait an error asks for, in seconds (its ``retry_after``), or None."""
    if isinstance(exc, ProtectedCallError):
        ns = exc.retry_after_ns
        return None if ns is None else max(0.0, ns / 1e9)
    value = getattr(exc, "retry_after", None)
    if value is None:
        return None
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return max(0.0, float(value))
    return None


def _delay_function(backoff: DelayStrategy | None) -> Callable[[int, float | None], float] | None:
    """``(attempt, previous delay) -> seconds`` for ``backoff``, or None without one."""
    if backoff is None:
        return None
    if isinstance(backoff, ExponentialDelay):
        # The engine's attempts are always valid: skip for_attempt's argument checks.
        return backoff.seconds_for
    for_attempt = backoff.for_attempt
    try:
        takes_previous = "previous" in inspect.signature(for_attempt).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes_previous = False
    if takes_previous:
        return lambda attempt, previous: float(for_attempt(attempt, previous=previous))  # type: ignore[call-arg]
    return lambda attempt, previous: float(for_attempt(attempt))


class RetryEngine:
    """The rules of one retry policy; every method is pure apart from updating ``Call``.

    A decision is either a ``float`` (wait that many seconds, then make attempt
    ``call.attempts``) or a ``GiveUp``.
    """

    __slots__ = (
        "_delay_for",
        "_handles",
        "_longest_wait",
        "backoff",
        "max_attempts",
        "max_duration",
        "should_handle",
    )

    def __init__(
        self,
        *,
        backoff: DelayStrategy | None,
        max_attempts: int,
        should_handle: Callable[[Exception], bool],
        max_duration: float | None,
        handles_everything: bool = False,
    ) -> None:
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.should_handle = should_handle
        self.max_duration = max_duration
        self._handles = None if handles_everything else should_handle
        self._delay_for = _delay_function(backoff)
        # Without max_duration, the longest a retry waits for a retry_after is the
        # backoff's own longest delay: a policy configured for short waits must not
        # block its caller for a breaker's whole cooldown.
        longest = getattr(backoff, "max_delay", None)
        self._longest_wait = longest.total_seconds() if isinstance(longest, timedelta) else None

    def decide(self, call: Call, exc: Exception | None, result: Any, now: float) -> float | GiveUp:
        """The attempt ``call.attempts`` raised ``exc``, or (``exc`` None) returned a
        ``result`` that ``retry_if_result`` refused."""
        if exc is not None:
            return self.after_error(call, exc, now)
        return self.after_result(call, result, now)

    def after_error(self, call: Call, exc: Exception, now: float) -> float | GiveUp:
        """The attempt ``call.attempts`` raised ``exc`` at ``now``."""
        handles = self._handles
        if handles is not None and not handles(exc):
            # Not the policy's business: the caller gets it at once, and no hook runs.
            return GiveUp(exc, None, None, None)
        rejected = isinstance(exc, ProtectedCallError)
        if not rejected:
            call.last_error = exc
        if call.attempts >= self.max_attempts:
            return self._give_up(call, "attempts", exc, None)
        delay_for = self._delay_for
        delay = 0.0 if delay_for is None else delay_for(call.attempts, call.previous_delay)
        wait = retry_after_seconds(exc)
        if wait is None:
            if rejected:
                # An OPEN breaker that gives no time would reject a retry at once.
                return self._give_up(call, "rejected", exc, None)
        elif wait > delay:
            limit = self._remaining(call, now)
            if limit is None:
                limit = self._longest_wait if self._longest_wait is not None else delay
            if wait > limit:
                return self._give_up(call, "retry_after", exc, None)
            delay = wait
        if self.max_duration is None:
            call.attempts += 1
            call.previous_delay = delay
            return delay
        return self._retry(call, delay, now, exc, None)

    def after_result(self, call: Call, result: Any, now: float) -> float | GiveUp:
        """The attempt ``call.attempts`` returned ``result``, which ``retry_if_result`` refused."""
        if call.attempts >= self.max_attempts:
            return self._give_up(call, "attempts", None, result)
        return self._retry(call, self._backoff_delay(call), now, None, result)

    def refused_by_budget(self, call: Call, exc: Exception | None, result: Any) -> GiveUp:
        """The retry budget refused the retry that the last decision asked for."""
        call.attempts -= 1
        return self._give_up(call, "budget", exc, result)

    def _backoff_delay(self, call: Call) -> float:
        delay_for = self._delay_for
        return 0.0 if delay_for is None else delay_for(call.attempts, call.previous_delay)

    def _remaining(self, call: Call, now: float) -> float | None:
        if self.max_duration is None:
            return None
        return self.max_duration - (now - call.started)

    def _retry(
        self, call: Call, delay: float, now: float, exc: Exception | None, result: Any
    ) -> float | GiveUp:
        remaining = self._remaining(call, now)
        # Never sleep past the call's whole budget: an attempt started at its very end
        # could not finish in time anyway.
        if remaining is not None and delay >= remaining:
            return self._give_up(call, "duration", exc, result)
        call.attempts += 1
        call.previous_delay = delay
        return delay

    def _give_up(
        self, call: Call, reason: GiveUpReason, exc: Exception | None, result: Any
    ) -> GiveUp:
        event = GiveUpEvent(call.attempts, reason, exc, result)
        if exc is None:
            # retry_if_result asked for the retries: the caller gets the last value.
            return GiveUp(None, None, result, event)
        last = call.last_error
        if last is None:
            # Only rejections so far: the caller gets the breaker's own error, unchanged.
            if reason in ("rejected", "retry_after"):
                return GiveUp(exc, None, None, event)
            last = exc
        elif reason == "retry_after" and exc is last:
            # The error asked for a wait longer than the policy may spend: it is the
            # caller's to handle, unchanged.
            return GiveUp(exc, None, None, event)
        return GiveUp(RetryLimitReached(_message(call.attempts, reason, exc)), last, None, event)


def _message(attempts: int, reason: GiveUpReason, exc: Exception) -> str:
    text = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
    if reason == "duration":
        return text + ": max_duration would be exceeded"
    if reason == "budget":
        return text + ": the retry budget is spent"
    if isinstance(exc, ProtectedCallError):
        return f"{text}: {exc}"
    if reason == "retry_after":
        return text + ": its retry_after is longer than the policy may wait"
    return text
