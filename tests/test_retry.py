"""Retry with backoff, delays, composition and the testing switch."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

import resilient_circuit
from resilient_circuit import (
    CircuitProtectorPolicy,
    ExponentialDelay,
    FixedDelay,
    ProtectedCallError,
    RetryEvent,
    RetryLimitReached,
    RetryWithBackoffPolicy,
    SafetyNet,
)
from resilient_circuit.storage import InMemoryStorage


def failing_until(successful_attempt: int, exc: Exception | None = None) -> Any:
    calls = {"n": 0}

    def func() -> str:
        calls["n"] += 1
        if calls["n"] < successful_attempt:
            raise exc or ConnectionError(f"attempt {calls['n']}")
        return "ok"

    func.calls = calls  # type: ignore[attr-defined]
    return func


def test_retries_until_success_with_exponential_waits() -> None:
    """Two failures then success: waits of 1 s and 2 s, nothing after the success."""
    waits: list[float] = []
    policy = RetryWithBackoffPolicy(
        max_retries=3,
        backoff=ExponentialDelay(timedelta(seconds=1), timedelta(seconds=10)),
        sleep=waits.append,
    )
    func = failing_until(3)
    assert policy(func)() == "ok"
    assert waits == [1.0, 2.0]


def test_gives_up_chained_from_the_last_error_without_a_final_wait() -> None:
    """After max_retries + 1 attempts RetryLimitReached carries the last error as cause."""
    waits: list[float] = []
    policy = RetryWithBackoffPolicy(
        max_retries=2, backoff=FixedDelay(timedelta(seconds=2)), sleep=waits.append
    )
    func = failing_until(99)
    with pytest.raises(RetryLimitReached) as caught:
        policy(func)()
    assert str(caught.value.__cause__) == "attempt 3"
    assert func.calls["n"] == 3
    assert waits == [2.0, 2.0]


def test_unhandled_exceptions_propagate_at_once_unchanged() -> None:
    """An exception should_handle declines is raised as is, after one attempt."""
    boom = ValueError("bug")
    policy = RetryWithBackoffPolicy(should_handle=lambda e: isinstance(e, ConnectionError))
    func = failing_until(99, boom)
    with pytest.raises(ValueError) as caught:
        policy(func)()
    assert caught.value is boom
    assert func.calls["n"] == 1


def test_zero_delay_never_sleeps() -> None:
    """FixedDelay(0) and no backoff both retry without calling sleep."""

    def forbidden(_: float) -> None:
        raise AssertionError("sleep called")

    for backoff in (None, FixedDelay(timedelta(0))):
        policy = RetryWithBackoffPolicy(max_retries=4, backoff=backoff, sleep=forbidden)
        assert policy(failing_until(5))() == "ok"


def test_on_retry_hook_sees_each_retry() -> None:
    """The hook receives a frozen event per retry with attempt, delay and exception."""
    seen: list[RetryEvent] = []
    policy = RetryWithBackoffPolicy(max_retries=3, on_retry=seen.append)
    policy(failing_until(3))()
    assert [e.attempt for e in seen] == [1, 2]
    assert isinstance(seen[0].exception, ConnectionError)
    with pytest.raises(AttributeError):
        seen[0].attempt = 5  # type: ignore[misc]


async def test_async_retry_awaits_its_sleep() -> None:
    """Coroutines retry with an awaited sleep, so the loop keeps serving other tasks."""
    waits: list[float] = []

    async def fake_sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(0)

    attempts = {"n": 0}

    async def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("x")
        return "ok"

    policy = RetryWithBackoffPolicy(
        max_retries=3, backoff=FixedDelay(timedelta(milliseconds=5)), async_sleep=fake_sleep
    )
    assert await policy(flaky)() == "ok"
    assert waits == [0.005, 0.005]


async def test_async_retry_gives_up() -> None:
    """An async function failing every time ends in RetryLimitReached."""

    async def down() -> None:
        raise TimeoutError("t")

    with pytest.raises(RetryLimitReached) as caught:
        await RetryWithBackoffPolicy(max_retries=1)(down)()
    assert isinstance(caught.value.__cause__, TimeoutError)


def test_set_testing_skips_waits() -> None:
    """With set_testing(True) the backoff delays are not slept."""

    def forbidden(_: float) -> None:
        raise AssertionError("sleep called")

    policy = RetryWithBackoffPolicy(backoff=FixedDelay(timedelta(hours=1)), sleep=forbidden)
    resilient_circuit.set_testing(True)
    try:
        assert resilient_circuit.is_testing()
        assert policy(failing_until(3))() == "ok"
    finally:
        resilient_circuit.set_testing(False)


def test_exponential_delay_caps_jitters_and_survives_huge_attempts() -> None:
    """Delays double to the cap, jitter stays within bounds, attempt 10 000 does not overflow."""
    delay = ExponentialDelay(timedelta(seconds=1), timedelta(seconds=10), factor=2, jitter=0.1)
    assert 0.9 <= delay.for_attempt(1) <= 1.1
    assert 3.6 <= delay.for_attempt(3) <= 4.4
    assert delay.for_attempt(10_000) <= 10.0
    plain = ExponentialDelay(timedelta(milliseconds=100), timedelta(seconds=1))
    assert [plain.for_attempt(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert FixedDelay(timedelta(seconds=2)).delay == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"min_delay": "1", "max_delay": timedelta(1)}, TypeError, "min_delay"),
        ({"min_delay": timedelta(-1), "max_delay": timedelta(1)}, ValueError, "min_delay"),
        ({"min_delay": timedelta(2), "max_delay": timedelta(1)}, ValueError, "max_delay"),
        ({"min_delay": timedelta(0), "max_delay": timedelta(1), "factor": 0.5}, ValueError, "fac"),
        ({"min_delay": timedelta(0), "max_delay": timedelta(1), "jitter": 2}, ValueError, "jit"),
    ],
)
def test_delay_validation_names_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Invalid delays are refused with an error naming the parameter."""
    with pytest.raises(error, match=name):
        ExponentialDelay(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"backoff": 3}, TypeError, "backoff"),
        ({"should_handle": None}, TypeError, "should_handle"),
        ({"on_retry": "x"}, TypeError, "on_retry"),
    ],
)
def test_retry_validation_names_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Invalid retry settings are refused with an error naming the parameter."""
    with pytest.raises(error, match=name):
        RetryWithBackoffPolicy(**kwargs)


class FakeTime:
    """One clock for the breaker (nanoseconds) and the retry (seconds); sleeping advances it."""

    def __init__(self) -> None:
        self.ns = 1_000_000_000
        self.waits: list[float] = []

    def monotonic_ns(self) -> int:
        return self.ns

    def monotonic(self) -> float:
        return self.ns / 1e9

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.ns += round(seconds * 1e9)


def timing_out() -> Any:
    calls = {"n": 0}

    def fetch() -> str:
        calls["n"] += 1
        raise TimeoutError(f"attempt {calls['n']}")

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


def test_breaker_opening_mid_retry_leaves_the_callers_error_as_the_cause() -> None:
    """Retry outermost in a SafetyNet: the breaker opens, the caller's TimeoutError is the cause."""
    breaker = CircuitProtectorPolicy(
        storage=InMemoryStorage(), failure_limit=Fraction(2, 3), cooldown=timedelta(seconds=60)
    )
    waits: list[float] = []
    retry = RetryWithBackoffPolicy(max_retries=5, sleep=waits.append)
    fetch = timing_out()
    with pytest.raises(RetryLimitReached) as caught:
        SafetyNet(policies=(retry, breaker))(fetch)()
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert str(caught.value.__cause__) == "attempt 3"
    # The rejection that ended the retries is kept as the context, not retried back to back.
    assert isinstance(caught.value.__context__, ProtectedCallError)
    assert fetch.calls["n"] == 3
    assert waits == []


def test_retry_waits_for_the_breaker_when_max_duration_allows() -> None:
    """A rejection's retry_after is waited out when it fits max_duration; the trial then runs."""
    now = FakeTime()
    breaker = CircuitProtectorPolicy(
        storage=InMemoryStorage(clock=now.monotonic_ns),
        failure_limit=Fraction(1, 1),
        cooldown=timedelta(seconds=60),
    )
    retry = RetryWithBackoffPolicy(
        max_retries=3, max_duration=timedelta(minutes=2), sleep=now.sleep, clock=now.monotonic
    )
    func = failing_until(2, TimeoutError("slow"))
    assert SafetyNet(policies=(retry, breaker))(func)() == "ok"
    assert now.waits == [60.0]
    assert func.calls["n"] == 2


def test_retry_gives_up_at_once_when_the_breaker_wait_exceeds_max_duration() -> None:
    """A cooldown longer than what is left of max_duration ends the retries without waiting."""
    now = FakeTime()
    breaker = CircuitProtectorPolicy(
        storage=InMemoryStorage(clock=now.monotonic_ns),
        failure_limit=Fraction(1, 1),
        cooldown=timedelta(seconds=60),
    )
    retry = RetryWithBackoffPolicy(
        max_retries=5, max_duration=timedelta(seconds=30), sleep=now.sleep, clock=now.monotonic
    )
    fetch = timing_out()
    with pytest.raises(RetryLimitReached) as caught:
        SafetyNet(policies=(retry, breaker))(fetch)()
    assert str(caught.value.__cause__) == "attempt 1"
    assert now.waits == []


def test_safety_net_refuses_duplicates() -> None:
    """Listing the same policy twice raises 0.4.5's ValueError message."""
    retry = RetryWithBackoffPolicy()
    with pytest.raises(ValueError, match=r"^All policies must be unique\.$"):
        SafetyNet(policies=(retry, retry))
