"""Coroutines through a policy: awaited inside it, sharing the breaker of sync callers."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from fractions import Fraction

import pytest

from resilient_circuit import CircuitState, ProtectedCallError
from resilient_circuit.storage import CircuitBreakerStorage
from resilient_circuit.storage.base import Snapshot
from tests._helpers import aflaky, flaky, make

# Tasks gathered at once; tests/test_async_load.py loads the PostgreSQL pool harder.
TASKS = {"memory": 300, "postgres": 100}


async def test_async_functions_are_awaited_inside_the_policy(
    astore: CircuitBreakerStorage,
) -> None:
    """An async def is protected as a coroutine: outcomes count, a trip rejects, the loop runs."""
    policy, events = make(
        astore, failure_limit=Fraction(1, 2), window_size=10, cooldown=timedelta(minutes=1)
    )
    call = aflaky(policy)
    assert asyncio.iscoroutinefunction(call)
    results = await asyncio.gather(*(call(True) for _ in range(20)))
    assert results == ["ok"] * 20
    for _ in range(5):
        with pytest.raises(TimeoutError):
            await call(False)
    with pytest.raises(ProtectedCallError):
        await call(True)
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    snap = policy.snapshot()
    assert (snap.state, snap.successes, snap.failures) == (CircuitState.OPEN, 20, 5)


async def test_async_exceptions_reach_the_caller_unchanged(
    astore: CircuitBreakerStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine's own exception propagates as the very object raised, whether should_handle
    declines it (a success), accepts it (a failure) or itself fails (logged, a failure)."""

    def broken(exc: Exception) -> bool:
        raise RuntimeError("predicate bug")

    outcomes: list[tuple[int, int]] = []
    for should_handle in (lambda e: not isinstance(e, KeyError), lambda e: True, broken):
        policy, _ = make(astore, resource_key=f"svc{len(outcomes)}", should_handle=should_handle)
        boom = KeyError("mine")

        @policy
        async def call(error: Exception = boom) -> None:
            await asyncio.sleep(0)
            raise error

        with pytest.raises(KeyError) as caught:
            await call()
        assert caught.value is boom
        assert caught.value.__cause__ is None
        snap = policy.snapshot()
        outcomes.append((snap.successes, snap.failures))
    assert outcomes == [(1, 0), (0, 1), (0, 1)]
    assert "should_handle" in caplog.text


async def test_sync_and_async_callers_share_one_breaker(astore: CircuitBreakerStorage) -> None:
    """A trip by a sync function rejects the coroutine of the same policy, and back."""
    policy, events = make(astore, cooldown=timedelta(minutes=1))
    sync_call, async_call = flaky(policy), aflaky(policy)
    assert await async_call() == "ok"
    with pytest.raises(ConnectionError):
        sync_call(False)
    with pytest.raises(ProtectedCallError):
        await async_call()
    policy.reset()
    assert sync_call() == "ok"
    with pytest.raises(TimeoutError):
        await async_call(False)
    with pytest.raises(ProtectedCallError):
        sync_call()
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
        (CircuitState.CLOSED, CircuitState.OPEN),
    ]


async def test_concurrent_tasks_share_the_breaker(
    astore: CircuitBreakerStorage, store_kind: str
) -> None:
    """Many tasks through one async policy lose no outcome."""
    tasks = TASKS[store_kind]
    policy, _ = make(astore, failure_limit=Fraction(1, 1), window_size=10_000)

    @policy
    async def call(i: int) -> int:
        await asyncio.sleep(0)
        return i

    results = await asyncio.gather(*(call(i) for i in range(tasks)))
    assert results == list(range(tasks))
    assert policy.snapshot().successes == tasks


def same_read(snap: Snapshot) -> Snapshot:
    """A snapshot without the cooldown left, which moves between two reads."""
    return dataclasses.replace(snap, open_remaining=None)


async def test_async_admin_matches_the_sync_admin(
    astore: CircuitBreakerStorage, peer: CircuitBreakerStorage
) -> None:
    """aforce, asnapshot and areset on a breaker handle do what force, snapshot and reset do,
    for every handle on the breaker."""
    policy, _ = make(astore, cooldown=timedelta(hours=1))
    breaker = astore.breaker("svc", astore.namespace, policy.config)
    forced = await breaker.aforce(CircuitState.OPEN)
    assert forced.state is CircuitState.OPEN
    seen = peer.get_state("svc")
    assert seen is not None
    assert (seen["state"], seen["generation"]) == ("OPEN", forced.generation)
    snap = await breaker.asnapshot()
    assert same_read(snap) == same_read(breaker.snapshot())
    assert (snap.state, snap.generation) == (CircuitState.OPEN, forced.generation)
    assert snap.open_remaining is not None
    assert timedelta(minutes=50) < snap.open_remaining <= timedelta(hours=1)
    reset = await breaker.areset()
    assert (reset.state, reset.generation) == (CircuitState.CLOSED, forced.generation + 1)
    seen = peer.get_state("svc")
    assert seen is not None
    assert seen["state"] == "CLOSED"
    assert (await breaker.aacquire()).permitted
    assert policy.status is CircuitState.CLOSED
