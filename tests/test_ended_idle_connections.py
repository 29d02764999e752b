"""Connections ended while idle in the store's pools (the server restarted, an admin ran
``pg_terminate_backend``, a proxy dropped them) are replaced before use: the server is
up, so the next calls go through the shared breaker, with no outage and no WARNING."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres import connection
from resilient_circuit.storage.postgres.idle import ended_while_idle
from tests._helpers import wait_for

pytestmark = pytest.mark.postgres

KEY = "ended"
NAMESPACE = "ended-idle"
CONNECTIONS = 3


class Boom(Exception):
    pass


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(
        pg_dsn, namespace=NAMESPACE, max_connections=CONNECTIONS, connect_timeout=5.0
    )
    yield made
    made.close()


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """WARNINGs (and worse) of the library's loggers and psycopg's pool."""
    caplog.set_level(logging.INFO)

    def read() -> list[str]:
        return [
            f"{r.name}: {r.getMessage()}"
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith(("resilient_circuit", "psycopg"))
        ]

    return read


def policy_for(store: PostgresStorage) -> CircuitProtectorPolicy:
    # "closed": a call the store could not answer for is refused, so a call that runs
    # went through the shared breaker.
    return CircuitProtectorPolicy(
        resource_key=KEY,
        storage=store,
        on_storage_error="closed",
        failure_limit=Fraction(1, 2),
        window_size=1000,
    )


def counters(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (KEY, NAMESPACE),
        ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def terminate(dsn: str, pids: set[int]) -> None:
    """End the backends ``pids`` and wait until the server has let them all go."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        # Only these pids: in a WHERE clause next to other conditions, the planner may
        # call pg_terminate_backend on rows those conditions would have excluded.
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),)
        ).fetchall()
        assert ended == [(True,)] * len(pids)

        def gone() -> bool:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
            ).fetchone()
            return row == (0,)

        assert wait_for(gone, 15.0)


def idle_sync_pids(store: PostgresStorage) -> set[int]:
    """The backends of the connections parked or idle in the store's sync pool."""
    pools = store._pools
    held = list(pools._parked) + list(pools.sync()._pool)
    return {conn.info.backend_pid for conn in held}


def fill_sync_pool(store: PostgresStorage, call: Callable[[], Any]) -> set[int]:
    """Every connection of the pool opened and idle, one of them parked after a call."""
    with (
        store.pool().connection() as a,
        store.pool().connection() as b,
        store.pool().connection() as c,
    ):
        assert len({a.info.backend_pid, b.info.backend_pid, c.info.backend_pid}) == CONNECTIONS
    call()
    pids = idle_sync_pids(store)
    assert len(pids) == CONNECTIONS
    assert len(store._pools._parked) == 1
    return pids


def test_sync_calls_after_every_idle_connection_was_terminated(
    store: PostgresStorage,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    warnings_logged: Callable[[], list[str]],
) -> None:
    """The parked connection and the pool's idle ones all terminated: the next calls
    record in the shared row on new connections, no outage, nothing worse than INFO."""
    monkeypatch.setattr(connection, "PARKED_FOR", 3600.0)  # stays parked
    policy = policy_for(store)
    call = policy(lambda: "ok")
    pids = fill_sync_pool(store, call)
    terminate(pg_dsn, pids)
    before = counters(pg_dsn)
    assert [call() for _ in range(2 * CONNECTIONS)] == ["ok"] * (2 * CONNECTIONS)
    assert counters(pg_dsn) == (before[0] + 2 * CONNECTIONS, before[1])
    assert store.outage.down_since is None
    assert warnings_logged() == []
    assert idle_sync_pids(store).isdisjoint(pids)
    assert store._pools.sync().get_stats()["pool_size"] <= CONNECTIONS
    store._pools.unpark()
    # The pool counts the replaced connections right: all of them can be out at once.
    with (
        store.pool().connection(timeout=5.0) as a,
        store.pool().connection(timeout=5.0) as b,
        store.pool().connection(timeout=5.0) as c,
    ):
        assert len({a.info.backend_pid, b.info.backend_pid, c.info.backend_pid}) == CONNECTIONS


def test_sync_failure_recorded_once_across_the_replacement(
    store: PostgresStorage,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    warnings_logged: Callable[[], list[str]],
) -> None:
    """A failing call on a terminated parked connection: its failure counts once."""
    monkeypatch.setattr(connection, "PARKED_FOR", 3600.0)
    policy = policy_for(store)
    ok = policy(lambda: "ok")
    pids = fill_sync_pool(store, ok)
    terminate(pg_dsn, pids)
    before = counters(pg_dsn)

    @policy
    def failing() -> None:
        raise Boom

    with pytest.raises(Boom):
        failing()
    assert counters(pg_dsn) == (before[0], before[1] + 1)
    assert store.outage.down_since is None
    assert warnings_logged() == []


def test_terminated_connections_are_replaced_under_threads(
    store: PostgresStorage,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    warnings_logged: Callable[[], list[str]],
) -> None:
    """Threads racing for the pool right after the termination all go through."""
    monkeypatch.setattr(connection, "PARKED_FOR", 3600.0)
    call = policy_for(store)(lambda: "ok")
    pids = fill_sync_pool(store, call)
    terminate(pg_dsn, pids)
    before = counters(pg_dsn)
    results: list[str] = []

    def calling() -> None:
        for _ in range(10):
            results.append(call())

    threads = [threading.Thread(target=calling) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == ["ok"] * 40
    assert counters(pg_dsn) == (before[0] + 40, before[1])
    assert store.outage.down_since is None
    assert warnings_logged() == []


async def _fill_async_pool(store: PostgresStorage, call: Callable[[], Any]) -> set[int]:
    pool = await store.apool()
    async with (
        pool.connection() as a,
        pool.connection() as b,
        pool.connection() as c,
    ):
        assert len({a.info.backend_pid, b.info.backend_pid, c.info.backend_pid}) == CONNECTIONS
    await call()
    pids = {conn.info.backend_pid for conn in pool._pool}
    assert len(pids) == CONNECTIONS
    return pids


async def test_async_calls_after_every_idle_connection_was_terminated(
    store: PostgresStorage, pg_dsn: str, warnings_logged: Callable[[], list[str]]
) -> None:
    """The event loop's pool, all its idle connections terminated: the next calls and a
    failure record in the shared row exactly once each, no outage, no WARNING; the
    replaced connections gave their shares of the budget back."""
    policy = policy_for(store)

    @policy
    async def ok() -> str:
        return "ok"

    @policy
    async def failing() -> None:
        raise Boom

    pids = await _fill_async_pool(store, ok)
    await asyncio.to_thread(terminate, pg_dsn, pids)
    before = counters(pg_dsn)
    with pytest.raises(Boom):
        await failing()
    results = await asyncio.gather(*(ok() for _ in range(2 * CONNECTIONS)))
    assert results == ["ok"] * (2 * CONNECTIONS)
    assert counters(pg_dsn) == (before[0] + 2 * CONNECTIONS, before[1] + 1)
    assert store.outage.down_since is None
    assert warnings_logged() == []
    pool = await store.apool()
    assert {conn.info.backend_pid for conn in pool._pool}.isdisjoint(pids)
    assert pool.get_stats()["pool_size"] <= CONNECTIONS
    assert store._pools.budget._used <= CONNECTIONS
    async with (
        pool.connection(timeout=5.0) as a,
        pool.connection(timeout=5.0) as b,
        pool.connection(timeout=5.0) as c,
    ):
        assert len({a.info.backend_pid, b.info.backend_pid, c.info.backend_pid}) == CONNECTIONS
    await store.aclose()


def test_a_live_idle_connection_is_not_taken_for_ended(pg_dsn: str) -> None:
    """The check sees nothing on a healthy idle connection, and sees its termination."""
    with (
        psycopg.connect(pg_dsn, autocommit=True) as conn,
        psycopg.connect(pg_dsn, autocommit=True) as admin,
    ):
        conn.execute("SELECT 1").fetchone()
        assert not ended_while_idle(conn)
        terminate(pg_dsn, {conn.info.backend_pid})
        assert wait_for(lambda: ended_while_idle(conn), 10.0)
        admin.execute("SELECT 1")
    assert ended_while_idle(conn)  # closed
