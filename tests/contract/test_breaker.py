"""What a breaker does through its decorator, the same in every store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

from resilient_circuit import (
    CircuitProtectorPolicy,
    CircuitState,
    CircuitStatus,
    ProtectedCallError,
)
from resilient_circuit.storage import CircuitBreakerStorage
from tests._helpers import Gate, flaky, make

# Calls each of eight threads makes: the memory store takes many more in the same time.
CALLS_PER_THREAD = {"memory": 500, "postgres": 25}


def test_trip_cooldown_probe_close_cycle(
    store: CircuitBreakerStorage, pause: Callable[[timedelta], None]
) -> None:
    """A full cycle fires each transition once; calls are rejected unrun until the cooldown ends."""
    # Long enough that a loaded machine cannot let the cooldown pass between the trip and
    # the call meant to be rejected; on PostgreSQL the pause really sleeps it.
    cooldown = timedelta(seconds=1)
    policy, events = make(store, failure_limit=Fraction(1, 2), window_size=4, cooldown=cooldown)
    call = flaky(policy)
    for ok in (True, False, True):
        try:
            call(ok)
        except ConnectionError:
            pass
    assert policy.status is CircuitState.CLOSED
    with pytest.raises(ConnectionError):
        call(False)
    with pytest.raises(ProtectedCallError) as rejected:
        call()
    retry_after = rejected.value.retry_after
    assert retry_after is not None
    assert timedelta(0) < retry_after <= cooldown
    assert rejected.value.state is CircuitState.OPEN
    assert policy.status is CircuitState.OPEN  # until a call after the cooldown
    assert list(policy.execution_log) == [True, False, True, False]
    pause(retry_after + timedelta(milliseconds=20))
    for _ in range(4):
        assert call() == "ok"
    assert policy.status is CircuitState.CLOSED
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_user_exceptions_reach_the_caller_unchanged(store: CircuitBreakerStorage) -> None:
    """The very exception object the function raised propagates, with no cause added."""
    policy, _ = make(store, failure_limit=Fraction(1, 3))
    boom = KeyError("mine")

    @policy
    def call() -> None:
        raise boom

    with pytest.raises(KeyError) as caught:
        call()
    assert caught.value is boom
    assert caught.value.__cause__ is None


def test_unhandled_exceptions_count_as_successes(store: CircuitBreakerStorage) -> None:
    """An exception should_handle declines propagates and is recorded as a success."""
    policy, _ = make(
        store, failure_limit=Fraction(1, 1), should_handle=lambda e: isinstance(e, ConnectionError)
    )

    @policy
    def call() -> None:
        raise ValueError("a bug, not an outage")

    for _ in range(3):
        with pytest.raises(ValueError):
            call()
    assert policy.status is CircuitState.CLOSED
    assert list(policy.execution_log) == [True]
    snap = policy.snapshot()
    assert (snap.successes, snap.failures) == (3, 0)


def test_a_failing_should_handle_counts_a_failure_and_hides_nothing(
    store: CircuitBreakerStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """A should_handle that raises is logged, the outcome counts as a failure, and the caller
    still gets the function's own exception."""

    def broken(exc: Exception) -> bool:
        raise RuntimeError("predicate bug")

    policy, _ = make(store, should_handle=broken, cooldown=timedelta(minutes=1))
    boom = KeyError("mine")

    @policy
    def call() -> None:
        raise boom

    with pytest.raises(KeyError) as caught:
        call()
    assert caught.value is boom
    assert "should_handle" in caplog.text
    snap = policy.snapshot()
    assert (snap.state, snap.failures) == (CircuitState.OPEN, 1)


def test_a_trip_through_one_handle_stops_the_other(
    store: CircuitBreakerStorage, peer: CircuitBreakerStorage
) -> None:
    """Failures through one policy open the breaker; the other's calls are rejected unrun."""
    limits: dict[str, Any] = {
        "failure_limit": Fraction(2, 3),
        "window_size": 3,
        "cooldown": timedelta(minutes=5),
    }
    first, first_events = make(store, **limits)
    second, second_events = make(peer, **limits)
    call_first, call_second = flaky(first), flaky(second)
    ran: list[int] = []

    @second
    def counted() -> None:
        ran.append(1)

    assert call_second() == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call_first(False)
    assert first.status is CircuitState.OPEN
    for _ in range(2):
        with pytest.raises(ProtectedCallError) as rejected:
            counted()
        assert rejected.value.retry_after is not None
        assert timedelta(minutes=4) < rejected.value.retry_after <= timedelta(minutes=5)
    assert ran == []
    assert first_events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert second_events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    snap = second.snapshot()
    assert (snap.state, snap.generation, snap.window, snap.failure_count) == (
        CircuitState.OPEN,
        1,
        (True, False, False),
        2,
    )
    assert (snap.successes, snap.failures) == (1, 2)


def test_status_setter_forces_and_notifies(
    store: CircuitBreakerStorage, peer: CircuitBreakerStorage
) -> None:
    """Setting .status forces the state for every policy, honouring the cooldown when OPEN."""
    policy, events = make(store, cooldown=timedelta(seconds=30))
    other, _ = make(peer, cooldown=timedelta(seconds=30))
    call = flaky(policy)
    policy.status = CircuitStatus.OPEN
    with pytest.raises(ProtectedCallError):
        call()
    assert other.status is CircuitState.OPEN
    policy.status = "half_open"
    assert policy.status is CircuitState.HALF_OPEN
    policy.status = CircuitState.CLOSED
    assert call() == "ok"
    assert other.status is CircuitState.CLOSED
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_unknown_state_is_refused(store: CircuitBreakerStorage) -> None:
    """Forcing an unknown state raises naming the parameter and leaves the breaker as it was."""
    policy, events = make(store)
    assert flaky(policy)() == "ok"
    for bad in ("AJAR", "", "OPEN; DROP TABLE rc_circuit_breakers"):
        with pytest.raises(ValueError, match="status"):
            policy.status = bad
        with pytest.raises(ValueError, match="state"):
            store.set_state("svc", bad, 0, 0)
    with pytest.raises(TypeError, match="status"):
        policy.status = None  # type: ignore[assignment]
    assert policy.status is CircuitState.CLOSED
    assert list(policy.execution_log) == [True]
    assert events == []


def test_half_open_admits_only_the_trials_still_needed(
    store: CircuitBreakerStorage, peer: CircuitBreakerStorage, pause: Callable[[timedelta], None]
) -> None:
    """With success_limit 2/3, three trials run at once across policies; a fourth waits for
    their outcome or for their permits to expire after half_open_timeout."""
    # Long enough that a loaded machine cannot let the first permit expire before the
    # fourth call is refused; on PostgreSQL the pause really sleeps it.
    half_open_timeout = timedelta(seconds=3)
    limits: dict[str, Any] = {
        "success_limit": Fraction(2, 3),
        "half_open_timeout": half_open_timeout,
    }
    policy, _ = make(store, **limits)
    other, _ = make(peer, **limits)
    other.snapshot()  # the peer's first connection is made before any permit runs down
    policy.status = CircuitState.OPEN  # no cooldown: the next call is a trial
    here, there = Gate(policy), Gate(other)
    try:
        here.enter()
        here.enter()
        there.enter()
        with pytest.raises(ProtectedCallError) as rejected:
            flaky(other)()
        assert rejected.value.state is CircuitState.HALF_OPEN
        retry_after = rejected.value.retry_after
        assert retry_after is not None
        assert timedelta(0) < retry_after <= half_open_timeout
        assert policy.snapshot().permits == 3
        pause(retry_after + timedelta(milliseconds=20))
        assert flaky(policy)() == "ok"  # the expired permits were released
    finally:
        outcomes = here.finish() + there.finish()
    assert outcomes == ["ok", "ok", "ok"]


def test_late_outcomes_of_an_older_generation_are_ignored(store: CircuitBreakerStorage) -> None:
    """An outcome admitted before a forced transition moves only the lifetime counters."""
    policy, events = make(store, failure_limit=Fraction(1, 1), cooldown=timedelta(hours=1))
    gate = Gate(policy)
    try:
        gate.enter(ok=False)
        policy.status = CircuitState.CLOSED  # a new generation begins
    finally:
        (outcome,) = gate.finish()
    assert isinstance(outcome, ConnectionError)
    snap = policy.snapshot()
    assert (snap.state, snap.generation, snap.window, snap.failures) == (
        CircuitState.CLOSED,
        1,
        (),
        1,
    )
    assert events == []


def test_no_lock_is_held_while_the_function_runs(store: CircuitBreakerStorage) -> None:
    """A call blocked inside the function does not delay other calls through the policy."""
    policy, _ = make(store)
    gate = Gate(policy)
    try:
        gate.enter()
        assert flaky(policy)() == "ok"
    finally:
        assert gate.finish() == ["ok"]


def test_threads_lose_no_outcome(store: CircuitBreakerStorage, store_kind: str) -> None:
    """Eight threads recording concurrently: the lifetime counters equal the calls made."""
    calls = CALLS_PER_THREAD[store_kind]
    policy, _ = make(store, failure_limit=Fraction(1, 1), window_size=10_000)
    call = flaky(policy)

    def work(seed: int) -> None:
        for i in range(calls):
            try:
                call((i + seed) % 25 != 0)
            except ConnectionError:
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = policy.snapshot()
    assert snap.successes + snap.failures == 8 * calls
    assert snap.failures == 8 * calls // 25
    assert snap.state is CircuitState.CLOSED


def test_listener_errors_do_not_fail_the_call(
    store: CircuitBreakerStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the caller still sees its own exception."""

    def broken(*_: Any) -> None:
        raise RuntimeError("listener bug")

    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, on_status_change=broken)
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    assert policy.status is CircuitState.OPEN
    assert "listener" in caplog.text


@pytest.mark.parametrize("parameter", ["resource_key", "namespace"])
def test_a_lone_surrogate_is_refused(store: CircuitBreakerStorage, parameter: str) -> None:
    """A key or namespace that is not valid Unicode raises ValueError naming it."""
    kwargs: dict[str, Any] = {"resource_key": "k", "storage": store, parameter: "a\udc80b"}
    with pytest.raises(ValueError, match=f"`{parameter}`"):
        CircuitProtectorPolicy(**kwargs)
