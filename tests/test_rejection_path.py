"""Admissions while CLOSED and rejections while OPEN on the memory store: the decorator
admits and rejects from the breaker's standing verdict without calling acquire, and that
verdict never outlives the state it was taken on (a force, another policy's transition,
hooks that must see each call)."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.instrumentation.hooks import CallRejected, CallSucceeded, Event
from resilient_circuit.storage import InMemoryStorage
from resilient_circuit.storage.memory import MemoryBreaker
from tests._helpers import Clock, aflaky, flaky, make


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(clock: Clock) -> InMemoryStorage:
    return InMemoryStorage(clock=clock)


def test_each_rejection_reads_the_clock(storage: InMemoryStorage, clock: Clock) -> None:
    """Rejections after the first are told the time left at their own moment."""
    policy, _ = make(storage, cooldown=timedelta(seconds=5))
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    waits = []
    for _ in range(3):
        with pytest.raises(ProtectedCallError) as rejected:
            call()
        waits.append(rejected.value.retry_after)
        clock.advance(1_000)
    assert waits == [timedelta(seconds=5), timedelta(seconds=4), timedelta(seconds=3)]
    assert repr(rejected.value) == (
        "ProtectedCallError(resource_key='svc', state='OPEN', "
        "retry_after=datetime.timedelta(seconds=3))"
    )
    clock.advance(2_000)
    assert call() == "ok"  # the half-open trial, once the cooldown is over


def test_a_force_closed_ends_the_standing_rejection(storage: InMemoryStorage) -> None:
    policy, events = make(storage, cooldown=timedelta(seconds=60))
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    for _ in range(2):
        with pytest.raises(ProtectedCallError):
            call()
    operator, _ = make(storage, cooldown=timedelta(seconds=60))
    operator.status = CircuitState.CLOSED  # another policy of the same breaker
    assert call() == "ok"
    assert events[-1] == (CircuitState.OPEN, CircuitState.CLOSED)


def test_another_policy_hears_the_transition_on_its_first_rejection(
    storage: InMemoryStorage,
) -> None:
    """A policy that has not seen the OPEN generation yet is not rejected from the
    verdict another policy's calls left, but through acquire, which tells it."""
    first, _ = make(storage, cooldown=timedelta(seconds=60))
    second, heard = make(storage, cooldown=timedelta(seconds=60))
    call_first, call_second = flaky(first), flaky(second)
    with pytest.raises(ConnectionError):
        call_first(False)
    with pytest.raises(ProtectedCallError):
        call_first()  # the verdict is now held
    assert heard == []
    with pytest.raises(ProtectedCallError) as rejected:
        call_second()
    assert heard == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert rejected.value.state is CircuitState.OPEN


def test_hooks_see_every_rejection(storage: InMemoryStorage) -> None:
    seen: list[Event] = []
    policy = CircuitProtectorPolicy(
        resource_key="svc", storage=storage, cooldown=timedelta(seconds=60), hooks=[seen.append]
    )
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    for _ in range(3):
        with pytest.raises(ProtectedCallError):
            call()
    assert sum(isinstance(event, CallRejected) for event in seen) == 3


def test_a_rejection_keeps_its_fields_through_pickle() -> None:
    rejection = ProtectedCallError.rejected("svc", CircuitState.OPEN, 2_500_000_000)
    copy = pickle.loads(pickle.dumps(rejection))
    assert (copy.resource_key, copy.state, copy.retry_after_ns, copy.args) == (
        "svc",
        CircuitState.OPEN,
        2_500_000_000,
        (),
    )
    assert str(copy) == "circuit 'svc' is OPEN; the call was not made (retry after 2.500s)"
    copy.add_note("still an exception with a dictionary")
    assert copy.__notes__ == ["still an exception with a dictionary"]


def test_a_repeated_admission_never_outlives_its_generation(storage: InMemoryStorage) -> None:
    """The decorator reuses a permitted CLOSED admission it has checked once; a peer's
    transition (a new reply) is still seen on the next call, once, and so is a return
    to CLOSED under a generation the decorator has not checked yet."""
    policy, events = make(storage, cooldown=timedelta(seconds=60))
    peer = CircuitProtectorPolicy(
        resource_key="svc", storage=storage, cooldown=timedelta(seconds=60)
    )
    call = flaky(policy)
    assert call() == call() == "ok"
    peer.status = CircuitState.OPEN
    with pytest.raises(ProtectedCallError):
        call()
    peer.status = CircuitState.CLOSED
    assert call() == call() == "ok"
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]
    with pytest.raises(ConnectionError):
        call(False)
    assert policy.execution_log.failure_count == 1


async def test_a_repeated_async_admission_never_outlives_its_generation(
    storage: InMemoryStorage,
) -> None:
    policy, events = make(storage, cooldown=timedelta(seconds=60))
    peer = CircuitProtectorPolicy(
        resource_key="svc", storage=storage, cooldown=timedelta(seconds=60)
    )
    call = aflaky(policy)
    assert await call() == await call() == "ok"
    peer.status = CircuitState.OPEN
    with pytest.raises(ProtectedCallError):
        await call()
    peer.status = CircuitState.CLOSED
    assert await call() == "ok"
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]


def test_a_closed_breaker_admits_without_acquire(
    storage: InMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While CLOSED the decorator takes the published admission; a peer's OPEN withdraws
    it before the next call, which is rejected and heard as a transition."""
    acquired: list[object] = []
    original = MemoryBreaker.acquire

    def counting(self: MemoryBreaker) -> object:
        acquired.append(self)
        return original(self)

    monkeypatch.setattr(MemoryBreaker, "acquire", counting)
    policy, events = make(storage, cooldown=timedelta(seconds=60))
    peer = CircuitProtectorPolicy(
        resource_key="svc", storage=storage, cooldown=timedelta(seconds=60)
    )
    call = flaky(policy)
    assert [call() for _ in range(5)] == ["ok"] * 5
    assert acquired == []
    peer.status = CircuitState.OPEN
    with pytest.raises(ProtectedCallError):
        call()
    assert len(acquired) == 1  # the new generation goes through acquire, once
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    peer.status = CircuitState.CLOSED
    assert call() == "ok"
    assert events[-1] == (CircuitState.OPEN, CircuitState.CLOSED)
    assert len(acquired) == 1  # the new CLOSED generation published its own admission


async def test_hooks_see_every_admission(storage: InMemoryStorage) -> None:
    """A policy with hooks is not admitted from the published admission: each call is
    reported, sync and async."""
    seen: list[Event] = []
    policy = CircuitProtectorPolicy(resource_key="svc", storage=storage, hooks=[seen.append])
    call, acall = flaky(policy), aflaky(policy)
    for _ in range(3):
        assert call() == "ok"
        assert await acall() == "ok"
    assert sum(isinstance(event, CallSucceeded) for event in seen) == 6
