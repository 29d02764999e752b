"""Reading and writing a breaker from outside a call: 0.4.5's admin API, status,
execution_log, snapshot and reset, the same in every store."""

from __future__ import annotations

import time
from datetime import timedelta
from fractions import Fraction

import pytest

from resilient_circuit import CircuitState, ProtectedCallError
from resilient_circuit.storage import CircuitBreakerStorage
from tests._helpers import flaky, make


def test_admin_api_reads_and_writes_state(
    store: CircuitBreakerStorage, peer: CircuitBreakerStorage
) -> None:
    """get_state/set_state keep 0.4.5's shape, and a state written through one handle is
    what every policy sees next."""
    policy, events = make(store, failure_limit=Fraction(1, 3), cooldown=timedelta(minutes=1))
    # Building a policy does no I/O: its first use (here a read) stores the breaker.
    assert policy.status is CircuitState.CLOSED
    fresh = peer.get_state("svc")
    assert fresh is not None
    assert (fresh["state"], fresh["failure_count"], fresh["open_until"]) == ("CLOSED", 0, 0)
    call = flaky(policy)
    call()
    call()
    assert list(policy.execution_log) == [True, True]
    assert policy.execution_log.is_full is False
    state = peer.get_state("svc")
    assert state is not None
    assert {"state", "failure_count", "open_until", "execution_log"} <= state.keys()
    assert (state["state"], state["execution_log"]) == ("CLOSED", [True, True])
    peer.set_state("svc", "OPEN", 4, 0, [False, False])
    state = peer.get_state("svc")
    assert state is not None
    assert (state["state"], state["failure_count"], state["execution_log"]) == (
        "OPEN",
        4,
        [False, False],
    )
    assert policy.status is CircuitState.OPEN
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert peer.get_state("nobody") is None
    policy.reset()
    snap = policy.snapshot()
    assert (snap.state, snap.window, snap.successes, snap.failures) == (
        CircuitState.CLOSED,
        (),
        0,
        0,
    )


def test_set_state_open_until_is_honoured(
    store: CircuitBreakerStorage, peer: CircuitBreakerStorage
) -> None:
    """An OPEN state written with an end time rejects calls until then, and reads back."""
    policy, _ = make(store, cooldown=timedelta(seconds=1))
    call = flaky(policy)
    assert call() == "ok"
    until = time.time() + 120
    peer.set_state("svc", "OPEN", 1, until, [False])
    state = store.get_state("svc")
    assert state is not None
    assert state["state"] == "OPEN"
    assert abs(state["open_until"] - until) < 1
    with pytest.raises(ProtectedCallError) as rejected:
        call()
    assert rejected.value.retry_after is not None
    assert timedelta(seconds=110) < rejected.value.retry_after <= timedelta(seconds=120)


@pytest.mark.parametrize(
    ("state", "capacity_from"), [("OPEN", "window_size"), ("HALF_OPEN", "success_limit")]
)
def test_set_state_keeps_only_the_newest_outcomes_that_fit(
    store: CircuitBreakerStorage, state: str, capacity_from: str
) -> None:
    """A log longer than the state's window is cut to its newest outcomes."""
    policy, _ = make(
        store, failure_limit=Fraction(1, 4), success_limit=Fraction(1, 2), cooldown=timedelta(1)
    )
    assert policy.status is CircuitState.CLOSED  # the first use stores the configuration
    store.set_state("svc", state, 3, 0, [True, True, False, True, False])
    expected = [True, False] if capacity_from == "success_limit" else [True, False, True, False]
    snap = policy.snapshot()
    assert snap.state is CircuitState(state)
    assert list(snap.window) == expected
    assert snap.window_capacity == len(expected)
    found = store.get_state("svc")
    assert found is not None
    assert found["execution_log"] == expected


def test_set_state_refuses_bad_arguments_naming_them(store: CircuitBreakerStorage) -> None:
    """Wrong types or values for set_state raise before anything is written."""
    policy, _ = make(store)
    assert flaky(policy)() == "ok"
    for args, error, name in [
        (("", "OPEN", 0, 0), ValueError, "resource_key"),
        (("svc", "OPEN", -1, 0), ValueError, "failure_count"),
        (("svc", "OPEN", True, 0), TypeError, "failure_count"),
        (("svc", "OPEN", 0, "soon"), TypeError, "open_until"),
        (("svc", "OPEN", 0, 0, [1, 0]), TypeError, "execution_log"),
        (("svc", "OPEN", 0, 0, [True] * 10_001), ValueError, "execution_log"),
    ]:
        with pytest.raises(error, match=name):
            store.set_state(*args)  # type: ignore[arg-type]
    assert policy.status is CircuitState.CLOSED
    assert list(policy.execution_log) == [True]


def test_snapshot_reads_the_whole_breaker(store: CircuitBreakerStorage) -> None:
    """A snapshot carries state, generation, window and its capacity, cooldown left,
    permits and lifetime counters; execution_log reads the same window."""
    policy, _ = make(
        store,
        failure_limit=Fraction(1, 2),
        window_size=4,
        success_limit=Fraction(2, 3),
        cooldown=timedelta(hours=1),
    )
    call = flaky(policy)
    assert call() == "ok"
    closed = policy.snapshot()
    assert (closed.state, closed.generation, closed.window, closed.window_capacity) == (
        CircuitState.CLOSED,
        0,
        (True,),
        4,
    )
    assert (closed.open_remaining, closed.permits, closed.successes, closed.failures) == (
        None,
        0,
        1,
        0,
    )
    with pytest.raises(ConnectionError):
        call(False)
    assert call() == "ok"
    with pytest.raises(ConnectionError):
        call(False)
    opened = policy.snapshot()
    assert (opened.state, opened.generation, opened.window, opened.failure_count) == (
        CircuitState.OPEN,
        1,
        (True, False, True, False),
        1,  # failures in a row, as 0.4.5 counted them
    )
    assert opened.open_remaining is not None
    assert timedelta(minutes=59) < opened.open_remaining <= timedelta(hours=1)
    assert (opened.permits, opened.successes, opened.failures) == (0, 2, 2)
    log = policy.execution_log
    assert (list(log), log.size, log.is_full) == ([True, False, True, False], 4, True)
    assert (log.success_count, log.failure_count, log.failure_rate) == (2, 2, Fraction(1, 2))
    policy.status = CircuitState.HALF_OPEN
    half_open = policy.snapshot()
    assert (half_open.state, half_open.generation, half_open.window) == (
        CircuitState.HALF_OPEN,
        2,
        (),
    )
    assert (half_open.window_capacity, half_open.open_remaining) == (3, None)


def test_set_state_keeps_the_given_open_until(store: CircuitBreakerStorage) -> None:
    """An OPEN state written with an end time reads back with that time, even a past one,
    until a later transition replaces it."""
    store.set_state("test_key", "OPEN", 5, 12345.67)
    result = store.get_state("test_key")
    assert result is not None
    assert (result["state"], result["failure_count"], result["open_until"]) == (
        "OPEN",
        5,
        12345.67,
    )
    store.set_state("test_key", "OPEN", 1, time.time() + 60)
    store.set_state("test_key", "CLOSED", 0, 0)
    result = store.get_state("test_key")
    assert result is not None
    assert (result["state"], result["open_until"]) == ("CLOSED", 0)


def test_delete_state_forgets_a_breaker(store: CircuitBreakerStorage) -> None:
    """delete_state answers whether the breaker existed; a policy holding it starts afresh
    with its own configuration."""
    policy, _ = make(store, resource_key="gone", window_size=2, cooldown=timedelta(minutes=1))
    call = flaky(policy)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(False)
    with pytest.raises(ProtectedCallError):
        call()
    assert store.delete_state("gone") is True
    assert store.get_state("gone") is None
    assert store.delete_state("gone") is False
    assert store.delete_state("never") is False
    assert policy.status is CircuitState.CLOSED
    assert call() == "ok"
    snap = policy.snapshot()
    assert (snap.state, snap.window, snap.window_capacity) == (CircuitState.CLOSED, (True,), 2)
