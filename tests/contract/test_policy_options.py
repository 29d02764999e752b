"""The policy's options beyond 0.4.5, the same in every store: which outcomes count,
fallback, timeout, the with/call forms, async predicates and hooks, holds, and their
validation."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import CircuitBreakerStorage


def make(store: CircuitBreakerStorage, **kwargs: Any) -> CircuitProtectorPolicy:
    kwargs.setdefault("resource_key", "svc")
    return CircuitProtectorPolicy(storage=store, **kwargs)


def raising(policy: CircuitProtectorPolicy) -> Any:
    @policy
    def call(exc: Exception | None = None, value: Any = "ok") -> Any:
        if exc is not None:
            raise exc
        return value

    return call


def counters(policy: CircuitProtectorPolicy) -> tuple[int, int]:
    snap = policy.snapshot()
    return snap.successes, snap.failures


def test_handle_counts_only_listed_exceptions(store: CircuitBreakerStorage) -> None:
    """An exception outside ``handle`` propagates and counts as a success; a listed one trips."""
    policy = make(store, handle=(ConnectionError,))
    call = raising(policy)
    with pytest.raises(KeyError):
        call(KeyError("k"))
    assert counters(policy) == (1, 0)
    assert policy.status is CircuitState.CLOSED
    with pytest.raises(ConnectionError):
        call(ConnectionError())
    assert policy.status is CircuitState.OPEN


def test_ignore_propagates_unrecorded_and_releases_the_trial(
    store: CircuitBreakerStorage,
) -> None:
    """An ignored exception reaches the caller unchanged, is not counted, and gives back
    its half-open permit so the next trial runs at once."""
    policy = make(store, ignore=(LookupError,))
    call = raising(policy)
    policy.status = CircuitState.HALF_OPEN
    error = KeyError("mine")
    with pytest.raises(KeyError) as caught:
        call(error)
    assert caught.value is error
    assert counters(policy) == (0, 0)
    assert policy.snapshot().permits == 0
    assert call() == "ok"
    assert policy.status is CircuitState.CLOSED


def test_should_handle_false_still_counts_a_success(store: CircuitBreakerStorage) -> None:
    """``should_handle`` keeps 0.4.5's meaning alongside ``handle``: False records a success."""
    policy = make(store, should_handle=lambda e: not isinstance(e, ValueError))
    call = raising(policy)
    with pytest.raises(ValueError, match="x"):
        call(ValueError("x"))
    assert counters(policy) == (1, 0)


def test_failure_if_counts_a_returned_value_and_still_returns_it(
    store: CircuitBreakerStorage,
) -> None:
    """A result ``failure_if`` flags is returned to the caller and counted as a failure."""
    policy = make(store, failure_if=lambda r: r == "bad")
    call = raising(policy)
    assert call(value="good") == "good"
    assert call(value="bad") == "bad"
    assert counters(policy) == (1, 1)
    assert policy.status is CircuitState.OPEN


def test_fallback_on_counted_failure_and_rejection(store: CircuitBreakerStorage) -> None:
    """The fallback's value replaces a counted failure and a rejection, not an uncounted error."""
    seen: list[Exception] = []

    def fallback(exc: Exception) -> str:
        seen.append(exc)
        return "cached"

    policy = make(store, fallback=fallback, handle=(ConnectionError,), cooldown=timedelta(1))
    call = raising(policy)
    with pytest.raises(KeyError):
        call(KeyError())
    assert call(ConnectionError("down")) == "cached"
    assert call() == "cached"
    assert isinstance(seen[0], ConnectionError)
    assert isinstance(seen[1], ProtectedCallError)


def test_call_form_and_with_form(store: CircuitBreakerStorage) -> None:
    """``policy.call`` and ``with policy:`` admit, record and reject like the decorator."""
    # Nothing waits the cooldown out: long, so that no loaded machine sees it end.
    policy = make(store, window_size=2, cooldown=timedelta(hours=1))
    assert policy.call(lambda a, b=0: a + b, 1, b=2) == 3
    with policy:
        pass
    with pytest.raises(OSError, match="boom"), policy:
        raise OSError("boom")
    assert counters(policy) == (2, 1)
    with pytest.raises(OSError, match="again"), policy:
        raise OSError("again")
    assert policy.status is CircuitState.OPEN
    with pytest.raises(ProtectedCallError), policy:
        pytest.fail("the block ran while OPEN")


def test_slow_calls_measured_by_the_policy(store: CircuitBreakerStorage) -> None:
    """A call longer than ``slow_call_duration`` counts as slow and trips at the slow limit."""
    policy = make(
        store,
        slow_call_duration=timedelta(milliseconds=20),
        slow_call_limit=Fraction(1, 1),
        cooldown=timedelta(seconds=5),
    )
    assert policy.call(lambda: "fast") == "fast"
    assert policy.status is CircuitState.CLOSED
    assert policy.call(lambda: asyncio.run(asyncio.sleep(0.05)) or "slow") == "slow"
    assert policy.status is CircuitState.OPEN


def test_force_hold_and_disabled(store: CircuitBreakerStorage) -> None:
    """A held OPEN never half-opens; DISABLED admits and never trips; reset releases both."""
    policy = make(store)
    call = raising(policy)
    policy.force(CircuitState.OPEN, hold=True)  # no cooldown: only the hold keeps it OPEN
    with pytest.raises(ProtectedCallError) as caught:
        call()
    assert caught.value.retry_after == timedelta(seconds=1)
    policy.reset()
    policy.status = CircuitState.DISABLED
    for _ in range(3):
        with pytest.raises(ConnectionError):
            call(ConnectionError())
    assert policy.status is CircuitState.DISABLED
    policy.reset()
    assert policy.status is CircuitState.CLOSED


def test_async_forms_timeout_and_async_predicates(store: CircuitBreakerStorage) -> None:
    """Async: a timeout cancels and counts a failure (TimeoutError, or the async fallback's
    value); async predicates and listeners are awaited; ``async with`` and ``acall`` work."""
    changes: list[tuple[CircuitState, CircuitState]] = []
    cancelled: list[bool] = []

    async def listener(policy: Any, old: CircuitState, new: CircuitState) -> None:
        changes.append((old, new))

    async def is_failure(result: Any) -> bool:
        return result == "bad"

    async def fallback(exc: Exception) -> str:
        return f"fallback after {type(exc).__name__}"

    async def main() -> None:
        policy = make(
            store,
            timeout=timedelta(milliseconds=20),
            failure_limit=Fraction(1, 3),
            cooldown=timedelta(seconds=5),
            on_status_change=listener,
            failure_if=is_failure,
        )

        @policy
        async def slow() -> None:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        async with policy:
            pass
        with pytest.raises(TimeoutError):
            await slow()
        assert cancelled == [True]
        assert await policy.acall(asyncio.sleep, 0, "bad") == "bad"
        with pytest.raises(ProtectedCallError):
            await policy.acall(asyncio.sleep, 0)
        await asyncio.sleep(0)
        assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]

        other = make(
            store, resource_key="other", timeout=timedelta(milliseconds=10), fallback=fallback
        )
        assert await other.acall(asyncio.sleep, 1) == "fallback after TimeoutError"

    asyncio.run(main())


def test_own_timeout_error_is_not_ours(store: CircuitBreakerStorage) -> None:
    """A TimeoutError raised by the function itself reaches the caller as the same object."""
    mine = TimeoutError("mine")

    async def raises() -> None:
        raise mine

    policy = make(store, timeout=timedelta(seconds=5))
    with pytest.raises(TimeoutError) as caught:
        asyncio.run(policy.acall(raises))
    assert caught.value is mine


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"handle": (int,)}, TypeError, "handle"),
        ({"ignore": "ValueError"}, TypeError, "ignore"),
        ({"failure_if": 3}, TypeError, "failure_if"),
        ({"fallback": "x"}, TypeError, "fallback"),
        ({"timeout": timedelta(0)}, ValueError, "timeout"),
        ({"window_duration": timedelta(0)}, ValueError, "window_duration"),
        ({"minimum_calls": 0}, ValueError, "minimum_calls"),
        ({"window_size": 4, "minimum_calls": 5}, ValueError, "minimum_calls"),
        ({"slow_call_limit": Fraction(1, 2)}, ValueError, "slow_call_limit"),
        ({"slow_call_duration": timedelta(-1)}, ValueError, "slow_call_duration"),
        ({"cooldown_factor": 0.5}, ValueError, "cooldown_factor"),
        ({"cooldown_factor": "2"}, TypeError, "cooldown_factor"),
        ({"cooldown": timedelta(2), "max_cooldown": timedelta(1)}, ValueError, "max_cooldown"),
    ],
)
def test_bad_options_name_the_parameter(
    store: CircuitBreakerStorage, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Every new option rejects bad input with an error naming it."""
    with pytest.raises(error, match=name):
        make(store, **kwargs)


def test_sync_function_refuses_async_only_options(store: CircuitBreakerStorage) -> None:
    """``timeout`` and async predicates need an async def function: decorating a sync one
    says so instead of silently never applying them."""

    async def check(result: Any) -> bool:
        return False

    with pytest.raises(TypeError, match="timeout"):
        make(store, timeout=timedelta(seconds=1))(lambda: None)
    with pytest.raises(TypeError, match="failure_if"):
        make(store, resource_key="b", failure_if=check)(lambda: None)
    with pytest.raises(ValueError, match="hold"):
        make(store, resource_key="c").force(CircuitState.CLOSED, hold=True)
