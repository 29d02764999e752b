"""The PostgreSQL store's async admin on its async pool, and its transition subscription.

What async admin does on every store is in tests/contract/test_async.py.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any, NoReturn

import pytest

from resilient_circuit import CircuitState
from resilient_circuit._machine import Config
from resilient_circuit.storage import PostgresStorage, Transition

CONFIG = Config.build(cooldown=timedelta(hours=1))


@pytest.fixture
async def pg_stores(pg_dsn: str) -> AsyncIterator[list[PostgresStorage]]:
    """Two stores with their own pools, like two processes; no flusher tick during a test."""
    made = [PostgresStorage(pg_dsn, flush_interval=3600) for _ in range(2)]
    yield made
    for store in made:
        await store.aclose()
        store.close()


@pytest.fixture
def listening(pg_dsn: str) -> Iterator[PostgresStorage]:
    """One store, for subscriptions."""
    store = PostgresStorage(pg_dsn)
    yield store
    store.close()


def row(store: PostgresStorage, key: str = "svc") -> dict[str, Any]:
    found = store.get_state(key)
    assert found is not None
    return found


def forbid_sync_pool(monkeypatch: pytest.MonkeyPatch, store: PostgresStorage) -> None:
    def blocked() -> NoReturn:
        raise AssertionError("an async method used the sync pool, blocking its event loop")

    monkeypatch.setattr(store, "pool", blocked)


async def test_async_admin_of_the_postgres_breaker_uses_the_async_pool(
    pg_stores: list[PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aforce, asnapshot and areset reach the row without touching the sync pool."""
    ours, _ = pg_stores
    breaker = ours.breaker("svc", "default", CONFIG)
    forbid_sync_pool(monkeypatch, ours)
    forced = await breaker.aforce(CircuitState.OPEN)
    assert forced.state is CircuitState.OPEN
    snap = await breaker.asnapshot()
    assert (snap.state, snap.generation) == (CircuitState.OPEN, forced.generation)
    reset = await breaker.areset()
    assert (reset.state, reset.generation) == (CircuitState.CLOSED, forced.generation + 1)


async def test_asnapshot_flushes_batched_outcomes_on_the_async_pool(
    pg_stores: list[PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued outcomes are written before the snapshot is read, all without the sync pool."""
    ours, peer = pg_stores
    breaker = ours.breaker("svc", "default", CONFIG, recording="batched")
    forbid_sync_pool(monkeypatch, ours)
    generation = (await breaker.aacquire()).generation
    for success in (True, True, False):
        await breaker.arecord(success, generation)
    assert breaker.queued == 3
    snap = await breaker.asnapshot()
    assert breaker.queued == 0
    assert (snap.successes, snap.failures) == (2, 1)
    assert row(peer)["failure_count"] == 1


def test_subscribers_hear_each_transition_once_invalidated(
    listening: PostgresStorage, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber gets every transition; a failing one is logged and stops nobody."""
    heard: queue.Queue[Transition] = queue.Queue()
    breaker = listening.breaker("svc", "default", CONFIG)
    breaker.snapshot()  # binding does no I/O: the first round trip stores the breaker
    seen_by_breaker: list[Any] = []

    def broken(event: Transition) -> None:
        raise RuntimeError("subscriber bug")

    def record(event: Transition) -> None:
        seen_by_breaker.append((breaker.last_known, breaker._trusted))  # type: ignore[attr-defined]
        heard.put(event)

    after: queue.Queue[Transition] = queue.Queue()
    listening.subscribe(broken)
    unsubscribe = listening.subscribe(record)
    listening.subscribe(after.put)  # runs after `record`: when it has heard, `record` would have
    assert listening.wait_listening()
    peer = PostgresStorage(pg_dsn)
    try:
        peer.breaker("svc", "default", CONFIG).force(CircuitState.OPEN)
        event = heard.get(timeout=10)
        assert (event.namespace, event.resource_key) == ("default", "svc")
        assert (event.old, event.new) == (CircuitState.CLOSED, CircuitState.OPEN)
        # Before the callback ran, the breaker dropped its cached verdict; the payload
        # itself (anyone may send one) did not become its state.
        last_known, trusted = seen_by_breaker[0]
        assert last_known.generation == 0
        assert trusted is False
        assert any("subscriber" in r.getMessage() for r in caplog.records)

        assert after.get(timeout=10).new is CircuitState.OPEN

        unsubscribe()
        peer.breaker("svc", "default", CONFIG).reset()
        # The listener is still alive (the broken subscriber did not stop it)...
        assert after.get(timeout=10).new is CircuitState.CLOSED
        # ...and the unsubscribed callback heard nothing more.
        assert heard.empty()
    finally:
        peer.close()


def test_subscribe_refuses_a_non_callable(listening: PostgresStorage) -> None:
    """subscribe(42) is a TypeError naming the parameter."""
    with pytest.raises(TypeError, match="callback"):
        listening.subscribe(42)  # type: ignore[arg-type]


async def test_async_admin_is_concurrent_on_one_loop(pg_stores: list[PostgresStorage]) -> None:
    """Several async admin calls run together on one event loop and all land."""
    ours, _ = pg_stores
    breakers = [ours.breaker(f"svc-{i}", "default", CONFIG) for i in range(4)]
    replies = await asyncio.gather(*(b.aforce(CircuitState.OPEN) for b in breakers))
    assert [r.state for r in replies] == [CircuitState.OPEN] * 4
    snaps = await asyncio.gather(*(b.asnapshot() for b in breakers))
    assert [s.state for s in snaps] == [CircuitState.OPEN] * 4
