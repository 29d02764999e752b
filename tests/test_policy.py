"""The breaker policy in memory: sync, async, threads, listeners, forcing, bad input."""

from __future__ import annotations

import asyncio
import threading
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
from resilient_circuit.storage import InMemoryStorage

MS = 1_000_000


class Clock:
    """A fake monotonic clock in nanoseconds."""

    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms * MS


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(clock: Clock) -> InMemoryStorage:
    return InMemoryStorage(clock=clock)


def make(storage: InMemoryStorage, **kwargs: Any) -> tuple[CircuitProtectorPolicy, list[Any]]:
    events: list[Any] = []
    kwargs.setdefault("resource_key", "svc")
    policy = CircuitProtectorPolicy(
        storage=storage, on_status_change=lambda p, o, n: events.append((o, n)), **kwargs
    )
    return policy, events


def flaky(policy: CircuitProtectorPolicy) -> Any:
    @policy
    def call(ok: bool = True) -> str:
        if not ok:
            raise ConnectionError("down")
        return "ok"

    return call


def test_trip_cooldown_probe_close_cycle(storage: InMemoryStorage, clock: Clock) -> None:
    """A full cycle fires each transition once, and the cooldown is honoured to the tick."""
    policy, events = make(
        storage, failure_limit=Fraction(1, 2), window_size=4, cooldown=timedelta(seconds=5)
    )
    call = flaky(policy)
    for ok in (True, False, True):
        try:
            call(ok)
        except ConnectionError:
            pass
    assert policy.status is CircuitState.CLOSED
    with pytest.raises(ConnectionError):
        call(False)
    assert policy.status is CircuitState.OPEN
    assert list(policy.execution_log) == [True, False, True, False]
    clock.advance(4_999)
    with pytest.raises(ProtectedCallError) as rejected:
        call()
    assert rejected.value.retry_after == timedelta(milliseconds=1)
    clock.advance(1)
    for _ in range(4):
        assert call() == "ok"
    assert policy.status is CircuitState.CLOSED
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_user_exceptions_reach_the_caller_unchanged(storage: InMemoryStorage) -> None:
    """The very exception object the function raised propagates, with its traceback."""
    policy, _ = make(storage, failure_limit=Fraction(1, 3))
    boom = KeyError("mine")

    @policy
    def call() -> None:
        raise boom

    with pytest.raises(KeyError) as caught:
        call()
    assert caught.value is boom
    assert caught.value.__cause__ is None


def test_unhandled_exceptions_count_as_successes(storage: InMemoryStorage) -> None:
    """An exception should_handle declines propagates and is recorded as a success."""
    policy, _ = make(
        storage,
        failure_limit=Fraction(1, 1),
        should_handle=lambda e: isinstance(e, ConnectionError),
    )

    @policy
    def call() -> None:
        raise ValueError("a bug, not an outage")

    for _ in range(3):
        with pytest.raises(ValueError):
            call()
    assert policy.status is CircuitState.CLOSED
    assert list(policy.execution_log) == [True]


def test_policies_sharing_storage_and_key_share_one_breaker(storage: InMemoryStorage) -> None:
    """A trip through one policy rejects the other's next call and fires its listener once."""
    first, first_events = make(storage, cooldown=timedelta(seconds=1))
    second, second_events = make(storage, cooldown=timedelta(seconds=1))
    call_first, call_second = flaky(first), flaky(second)
    assert call_second() == "ok"
    with pytest.raises(ConnectionError):
        call_first(False)
    with pytest.raises(ProtectedCallError):
        call_second()
    with pytest.raises(ProtectedCallError):
        call_second()
    assert first_events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert second_events == [(CircuitState.CLOSED, CircuitState.OPEN)]


def test_status_setter_forces_and_notifies(storage: InMemoryStorage, clock: Clock) -> None:
    """Setting .status forces the state for everyone, honouring the cooldown when OPEN."""
    policy, events = make(storage, cooldown=timedelta(seconds=1))
    call = flaky(policy)
    policy.status = CircuitStatus.OPEN
    with pytest.raises(ProtectedCallError):
        call()
    policy.status = "half_open"
    assert policy.status is CircuitState.HALF_OPEN
    policy.status = CircuitState.CLOSED
    assert call() == "ok"
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_half_open_admits_only_the_trials_still_needed(
    storage: InMemoryStorage, clock: Clock
) -> None:
    """With success_limit 2/3, three concurrent trials run; a fourth waits for their outcome."""
    policy, _ = make(storage, success_limit=Fraction(2, 3), half_open_timeout=timedelta(seconds=3))
    policy.status = CircuitState.OPEN
    breaker = policy._breaker
    assert all(breaker.acquire().permitted for _ in range(3))
    fourth = breaker.acquire()
    assert not fourth.permitted
    assert fourth.retry_after == 3_000 * MS
    clock.advance(3_000)
    assert breaker.acquire().permitted  # the expired permits were released


def test_no_lock_is_held_while_the_function_runs(storage: InMemoryStorage) -> None:
    """A call blocked inside the function does not delay other calls through the policy."""
    policy, _ = make(storage)
    inside, release = threading.Event(), threading.Event()

    @policy
    def slow() -> None:
        inside.set()
        release.wait(10)

    @policy
    def fast() -> str:
        return "done"

    worker = threading.Thread(target=slow)
    worker.start()
    assert inside.wait(5)
    assert fast() == "done"
    release.set()
    worker.join(5)


def test_threads_lose_no_outcome(storage: InMemoryStorage) -> None:
    """Eight threads recording concurrently: the lifetime counters equal the calls made."""
    policy, _ = make(storage, failure_limit=Fraction(1, 1), window_size=1000)
    call = flaky(policy)

    def work(seed: int) -> None:
        for i in range(500):
            try:
                call((i + seed) % 125 != 0)
            except ConnectionError:
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = policy.snapshot()
    assert snap.successes + snap.failures == 4000
    assert snap.failures == 32


async def test_async_functions_are_awaited_inside_the_policy(storage: InMemoryStorage) -> None:
    """An async def is protected as a coroutine: failures count, the loop keeps running."""
    policy, events = make(storage, failure_limit=Fraction(1, 2), cooldown=timedelta(seconds=1))

    @policy
    async def call(ok: bool) -> str:
        await asyncio.sleep(0)
        if not ok:
            raise TimeoutError("slow")
        return "ok"

    assert asyncio.iscoroutinefunction(call)
    assert await call(True) == "ok"
    with pytest.raises(TimeoutError):
        await call(False)
    assert policy.status is CircuitState.OPEN
    with pytest.raises(ProtectedCallError):
        await call(True)
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]


async def test_concurrent_tasks_share_the_breaker(storage: InMemoryStorage) -> None:
    """Many tasks through one async policy lose no outcome."""
    policy, _ = make(storage, failure_limit=Fraction(1, 1), window_size=10_000)

    @policy
    async def call(i: int) -> int:
        await asyncio.sleep(0)
        return i

    results = await asyncio.gather(*(call(i) for i in range(300)))
    assert results == list(range(300))
    assert policy.snapshot().successes == 300


def test_listener_errors_do_not_fail_the_call(
    storage: InMemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the caller still sees its own exception."""

    def broken(*_: Any) -> None:
        raise RuntimeError("listener bug")

    policy = CircuitProtectorPolicy(resource_key="svc", storage=storage, on_status_change=broken)
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    assert "listener" in caplog.text


def test_defaults_match_0_4_5(storage: InMemoryStorage) -> None:
    """Default limits read 1/1, the window follows the failure limit's denominator."""
    policy = CircuitProtectorPolicy(storage=storage)
    assert policy.failure_limit == Fraction(1, 1)
    assert policy.success_limit == Fraction(1, 1)
    assert policy.cooldown == timedelta(0)
    assert policy.resource_key.startswith("anonymous_")
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
        ({"resource_key": ""}, ValueError, "resource_key"),
        ({"resource_key": "k" * 256}, ValueError, "resource_key"),
        ({"resource_key": 42}, TypeError, "resource_key"),
        ({"namespace": ""}, ValueError, "namespace"),
        ({"should_handle": "yes"}, TypeError, "should_handle"),
        ({"on_status_change": 1}, TypeError, "on_status_change"),
        ({"on_storage_error": "maybe"}, ValueError, "on_storage_error"),
        ({"storage": {}}, TypeError, "storage"),
    ],
)
def test_bad_input_names_the_parameter(
    storage: InMemoryStorage, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Each invalid argument is refused with an error that names it."""
    kwargs.setdefault("storage", storage)
    with pytest.raises(error, match=name):
        CircuitProtectorPolicy(**kwargs)


def test_unknown_state_is_refused(storage: InMemoryStorage) -> None:
    """Forcing an unknown state raises and leaves the breaker as it was."""
    policy, _ = make(storage)
    with pytest.raises(ValueError, match="status"):
        policy.status = "AJAR"  # type: ignore[assignment]
    assert policy.status is CircuitState.CLOSED


def test_admin_api_reads_and_writes_state(storage: InMemoryStorage) -> None:
    """get_state/set_state keep 0.4.5's shape and a forced state is seen by policies."""
    policy, events = make(storage, cooldown=timedelta(seconds=30))
    assert storage.get_state("svc")["state"] == "CLOSED"  # type: ignore[index]
    storage.set_state("svc", "OPEN", 3, 0, [False, False])
    state = storage.get_state("svc")
    assert state is not None
    assert (state["state"], state["failure_count"], state["execution_log"]) == (
        "OPEN",
        3,
        [False],
    )
    assert policy.status is CircuitState.OPEN
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert storage.get_state("missing") is None
