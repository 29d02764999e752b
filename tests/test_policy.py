"""The policy object itself (defaults, validation), what the memory store's injectable
clock proves exactly, and its lock-free paths under threads. Behaviour every store
shares is in tests/contract/."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from resilient_circuit import (
    CircuitProtectorPolicy,
    CircuitState,
    ProtectedCallError,
    RetryBudget,
    RetryWithBackoffPolicy,
)
from resilient_circuit.backoff import ExponentialDelay, FixedDelay
from resilient_circuit.storage import InMemoryStorage
from tests._helpers import Clock, Gate, flaky, make


@pytest.fixture
def clock() -> Clock:
    """The fake clock the memory store reads."""
    return Clock()


@pytest.fixture
def storage(clock: Clock) -> InMemoryStorage:
    """A memory store on the fake clock."""
    return InMemoryStorage(clock=clock)


def test_cooldown_is_honoured_to_the_tick(storage: InMemoryStorage, clock: Clock) -> None:
    """A call one millisecond before the cooldown ends is told to retry in that millisecond."""
    policy, events = make(storage, cooldown=timedelta(seconds=5))
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    clock.advance(4_999)
    with pytest.raises(ProtectedCallError) as rejected:
        call()
    assert rejected.value.retry_after == timedelta(milliseconds=1)
    clock.advance(1)
    assert call() == "ok"
    assert policy.status is CircuitState.CLOSED
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_half_open_retry_after_is_the_oldest_permits_expiry(
    storage: InMemoryStorage, clock: Clock
) -> None:
    """With every trial out, the next call waits exactly until the first permit expires."""
    policy, _ = make(storage, success_limit=Fraction(2, 3), half_open_timeout=timedelta(seconds=3))
    policy.status = CircuitState.OPEN
    gate = Gate(policy)
    try:
        for _ in range(3):
            gate.enter()
        with pytest.raises(ProtectedCallError) as rejected:
            flaky(policy)()
        assert rejected.value.retry_after == timedelta(seconds=3)
        clock.advance(2_999)
        with pytest.raises(ProtectedCallError) as rejected:
            flaky(policy)()
        assert rejected.value.retry_after == timedelta(milliseconds=1)
        clock.advance(1)
        assert flaky(policy)() == "ok"  # the expired permits were released
    finally:
        assert gate.finish() == ["ok", "ok", "ok"]


def test_defaults_match_0_4_5(storage: InMemoryStorage) -> None:
    """Default limits read 1/1, the window follows the failure limit's denominator."""
    policy = CircuitProtectorPolicy(storage=storage)
    assert policy.failure_limit == Fraction(1, 1)
    assert policy.success_limit == Fraction(1, 1)
    assert policy.cooldown == timedelta(0)
    assert CircuitProtectorPolicy(storage=storage, failure_limit=Fraction(5, 10)).window_size == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"failure_limit": Fraction(3, 2)}, ValueError, "failure_limit"),
        ({"failure_limit": 0}, ValueError, "failure_limit"),
        ({"failure_limit": "lots"}, ValueError, "failure_limit"),
        ({"failure_limit": object()}, TypeError, "failure_limit"),
        ({"success_limit": Fraction(0, 1)}, ValueError, "success_limit"),
        ({"cooldown": timedelta(seconds=-1)}, ValueError, "cooldown"),
        ({"cooldown": "30s"}, TypeError, "cooldown"),
        ({"half_open_timeout": timedelta(0)}, ValueError, "half_open_timeout"),
        ({"window_size": 0}, ValueError, "window_size"),
        ({"window_size": 10_001}, ValueError, "window_size"),
        ({"failure_limit": Fraction(3, 20_000)}, ValueError, "`failure_limit`"),
        ({"resource_key": ""}, ValueError, "resource_key"),
        ({"resource_key": "k" * 256}, ValueError, "resource_key"),
        ({"resource_key": 42}, TypeError, "resource_key"),
        ({"namespace": ""}, ValueError, "namespace"),
        ({"should_handle": "yes"}, TypeError, "should_handle"),
        ({"on_status_change": 1}, TypeError, "on_status_change"),
        ({"on_storage_error": "maybe"}, ValueError, "on_storage_error"),
        ({"storage": {}}, TypeError, "storage"),
        ({"failure_limit": float("nan")}, ValueError, "`failure_limit`"),
        ({"failure_limit": Decimal("NaN")}, ValueError, "`failure_limit`"),
        ({"cooldown": float("inf")}, ValueError, "`cooldown`"),
        ({"cooldown": "30"}, TypeError, "`cooldown` must be a timedelta or a number of seconds"),
        ({"minimum_calls": -1}, ValueError, r"holds 1 outcomes \(the denominator of failure_limit"),
        ({"minimum_calls": 20, "window_size": 10}, ValueError, r"\[1, 10\].*\(window_size\)"),
    ],
)
def test_bad_input_names_the_parameter(
    storage: InMemoryStorage, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Each invalid argument is refused with an error that names it."""
    kwargs.setdefault("storage", storage)
    with pytest.raises(error, match=name):
        CircuitProtectorPolicy(**kwargs)


def test_every_duration_takes_a_number_of_seconds(storage: InMemoryStorage) -> None:
    """A number where a duration is expected is that many seconds, kept as a timedelta,
    on the breaker, the retry, its delays and the retry budget alike."""
    policy = CircuitProtectorPolicy(resource_key="s", storage=storage, cooldown=30)
    assert policy.cooldown == timedelta(seconds=30)
    assert FixedDelay(2).delay == timedelta(seconds=2)  # type: ignore[arg-type]
    delays = ExponentialDelay(0.5, 10)  # type: ignore[arg-type]
    assert (delays.min_delay, delays.max_delay) == (timedelta(seconds=0.5), timedelta(seconds=10))
    retry = RetryWithBackoffPolicy(max_duration=5)  # type: ignore[arg-type]
    assert retry.max_duration == timedelta(seconds=5)
    budget = RetryBudget("s", flush_interval=0.5)  # type: ignore[arg-type]
    assert budget.flush_interval == timedelta(milliseconds=500)


def test_time_window_counts_every_outcome_from_many_threads() -> None:
    """Threads recording through a time window's unlocked success path, with failures
    forcing locked changes, lose no outcome from the lifetime counters."""
    policy, _ = make(
        InMemoryStorage(),
        window_duration=timedelta(milliseconds=5),
        failure_limit=Fraction(1, 1),
        minimum_calls=1000,
    )
    call = flaky(policy)

    def worker(seed: int) -> None:
        for i in range(3000):
            if (i + seed) % 97 == 0:
                with pytest.raises(ConnectionError):
                    call(False)
            else:
                call()
            if i % 1000 == 999 and seed == 0:
                policy.status = CircuitState.CLOSED  # a transition while others count

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = policy.snapshot()
    assert snap.successes + snap.failures == 6 * 3000
    assert snap.failures == sum(1 for s in range(6) for i in range(3000) if (i + s) % 97 == 0)


def test_count_and_time_windows_in_one_store_count_their_own_successes() -> None:
    """A count window's steady successes and a time window's counted ones take different
    unlocked paths of one store; interleaved, each breaker counts exactly its own."""
    storage = InMemoryStorage()
    count, _ = make(storage, resource_key="count", window_size=4)
    timed, _ = make(storage, resource_key="timed", window_duration=timedelta(seconds=60))
    count_call, timed_call = flaky(count), flaky(timed)
    for i in range(50):
        count_call()
        timed_call()
        if i == 20:
            with pytest.raises(ConnectionError):
                timed_call(False)
    count_snap, timed_snap = count.snapshot(), timed.snapshot()
    assert (count_snap.successes, count_snap.failures) == (50, 0)
    assert count_snap.window == (True,) * 4
    assert (timed_snap.successes, timed_snap.failures) == (50, 1)
    assert timed_snap.state is CircuitState.CLOSED


@pytest.mark.parametrize("options", [{}, {"failure_if": lambda result: False}])
def test_arguments_reach_the_function_as_given(
    storage: InMemoryStorage, options: dict[str, Any]
) -> None:
    """Positional and keyword arguments, or none, reach a sync function unchanged."""
    policy = CircuitProtectorPolicy(resource_key="args", storage=storage, **options)

    @policy
    def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    assert echo() == ((), {})
    assert echo(1, 2) == ((1, 2), {})
    assert echo(1, b=2) == ((1,), {"b": 2})
    assert echo(a=1) == ((), {"a": 1})
    assert policy.call(echo.__wrapped__, 1, b=2) == ((1,), {"b": 2})  # type: ignore[attr-defined]


@pytest.mark.parametrize("options", [{}, {"timeout": timedelta(seconds=5)}])
async def test_arguments_reach_a_coroutine_function_as_given(
    storage: InMemoryStorage, options: dict[str, Any]
) -> None:
    """Positional and keyword arguments, or none, reach an async function unchanged."""
    policy = CircuitProtectorPolicy(resource_key="aargs", storage=storage, **options)

    @policy
    async def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    assert await echo() == ((), {})
    assert await echo(1, 2) == ((1, 2), {})
    assert await echo(1, b=2) == ((1,), {"b": 2})
    assert await echo(a=1) == ((), {"a": 1})


@pytest.mark.parametrize(("option", "value"), [("admission", "fast"), ("recording", "later")])
def test_a_policy_without_resource_key_refuses_an_unknown_mode_when_built(
    option: str, value: str
) -> None:
    """An unknown admission or recording raises ValueError naming it at construction, key or not."""
    with pytest.raises(ValueError, match=f"`{option}` must be"):
        CircuitProtectorPolicy(storage=InMemoryStorage(), **{option: value})
