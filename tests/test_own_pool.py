"""PostgresStorage on connections the application owns: its pools, or a connection factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import PostgresStorage


@pytest.fixture
def sync_pool(pg_dsn: str) -> Iterator[ConnectionPool]:
    """The application's pool, in psycopg's default transaction mode (not autocommit)."""
    pool = ConnectionPool(pg_dsn, min_size=1, max_size=4, open=True)
    yield pool
    pool.close()


@pytest.fixture
async def async_pool(pg_dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(pg_dsn, min_size=1, max_size=4, open=False)
    await pool.open()
    yield pool
    await pool.close()


def guarded(storage: PostgresStorage, key: str = "own", **kwargs: Any) -> CircuitProtectorPolicy:
    return CircuitProtectorPolicy(
        resource_key=key,
        storage=storage,
        window_size=2,
        cooldown=timedelta(minutes=1),
        **kwargs,
    )


def trip(policy: CircuitProtectorPolicy) -> None:
    @policy
    def fail() -> None:
        raise RuntimeError("down")

    for _ in range(3):
        try:
            fail()
        except ProtectedCallError:
            return
        except RuntimeError:
            pass


def stored_state(dsn: str, key: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT state FROM rc_circuit_breakers WHERE resource_key = %s", [key]
        ).fetchone()
    return None if row is None else str(row[0])


def test_an_application_pool_serves_the_breaker_and_stays_open(
    sync_pool: ConnectionPool, pg_dsn: str
) -> None:
    """On the application's (non-autocommit) pool every write commits; close() leaves it open."""
    store = PostgresStorage(pool=sync_pool)
    policy = guarded(store)
    trip(policy)
    assert policy.status is CircuitState.OPEN
    assert stored_state(pg_dsn, "own") == "OPEN"  # committed, seen from another session
    store.close()
    assert not sync_pool.closed
    with sync_pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_breakers_on_an_application_pool_are_shared_with_other_stores(
    sync_pool: ConnectionPool, pg_dsn: str
) -> None:
    """A store on the application's pool and one with its own pool share one breaker."""
    own = PostgresStorage(pg_dsn)
    try:
        trip(guarded(PostgresStorage(pool=sync_pool)))
        assert guarded(own).status is CircuitState.OPEN
    finally:
        own.close()


def test_a_connection_factory_of_plain_connections(pg_dsn: str) -> None:
    """A factory returning new connections: each is committed and closed after its round trip."""
    made: list[psycopg.Connection[Any]] = []

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(pg_dsn)
        made.append(conn)
        return conn

    store = PostgresStorage(connection_factory=connect)
    trip(guarded(store))
    assert stored_state(pg_dsn, "own") == "OPEN"
    assert made
    assert all(conn.closed for conn in made)
    store.close()


def test_a_connection_factory_lending_from_a_pool(sync_pool: ConnectionPool, pg_dsn: str) -> None:
    """``connection_factory=pool.connection`` borrows and gives back, as with ``pool=``."""
    store = PostgresStorage(connection_factory=sync_pool.connection)
    trip(guarded(store))
    assert stored_state(pg_dsn, "own") == "OPEN"
    assert sync_pool.get_stats()["pool_size"] >= 1
    store.close()
    assert not sync_pool.closed


def test_seed_style_get_connection_on_an_application_pool(sync_pool: ConnectionPool) -> None:
    """``_get_connection()`` lends one of the application's connections."""
    store = PostgresStorage(pool=sync_pool)
    with store._get_connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_unreachable_application_database_is_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A factory that cannot connect is an outage: calls fail open, one WARNING."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit.storage")

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2")

    store = PostgresStorage(connection_factory=connect)
    policy = guarded(store)

    @policy
    def work() -> str:
        return "done"

    for _ in range(3):
        assert work() == "done"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1


async def test_an_application_async_pool_serves_coroutines(
    async_pool: AsyncConnectionPool, pg_dsn: str
) -> None:
    """Coroutines use the application's AsyncConnectionPool; aclose() leaves it open."""
    store = PostgresStorage(pool=async_pool)
    policy = guarded(store)

    @policy
    async def fail() -> None:
        raise RuntimeError("down")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await fail()
    with pytest.raises(ProtectedCallError):
        await fail()
    assert stored_state(pg_dsn, "own") == "OPEN"
    await store.aclose()
    store.close()
    assert not async_pool.closed


async def test_an_async_pool_alone_refuses_sync_calls_by_name(
    async_pool: AsyncConnectionPool,
) -> None:
    """With only an AsyncConnectionPool, binding is free and a sync call says what is missing."""
    store = PostgresStorage(pool=async_pool)
    policy = guarded(store)

    @policy
    def sync_call() -> str:
        return "ran"

    with pytest.raises(TypeError, match="ConnectionPool"):
        sync_call()


async def test_a_sync_pool_alone_serves_coroutines_from_a_thread(
    sync_pool: ConnectionPool, pg_dsn: str
) -> None:
    """With only a ConnectionPool, coroutines' round trips run in a worker thread."""
    store = PostgresStorage(pool=sync_pool)
    policy = guarded(store)

    @policy
    async def fail() -> None:
        raise RuntimeError("down")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await fail()
    assert stored_state(pg_dsn, "own") == "OPEN"


async def test_both_pools_together(
    sync_pool: ConnectionPool, async_pool: AsyncConnectionPool
) -> None:
    """A pair of pools: sync calls use one, coroutines the other, on the same breaker."""
    store = PostgresStorage(pool=(sync_pool, async_pool))
    policy = guarded(store)
    trip(policy)

    @policy
    async def ok() -> str:
        return "ok"

    with pytest.raises(ProtectedCallError):
        await ok()


def test_cached_admission_listens_on_the_pools_conninfo(sync_pool: ConnectionPool) -> None:
    """Cached admission on an application pool listens on the pool's own connection string."""
    store = PostgresStorage(pool=sync_pool)
    guarded(store, admission="cached")
    try:
        assert store.wait_listening(10)
    finally:
        store.close()


def test_where_connections_come_from_is_checked() -> None:
    """Exactly one of dsn, pool and connection_factory, each of the right kind."""
    with pytest.raises(TypeError, match="exactly one"):
        PostgresStorage()
    with pytest.raises(TypeError, match="exactly one"):
        PostgresStorage("host=x", connection_factory=lambda: None)
    with pytest.raises(TypeError, match="pool"):
        PostgresStorage(pool="host=x")
    with pytest.raises(TypeError, match="connection_factory"):
        PostgresStorage(connection_factory="host=x")  # type: ignore[arg-type]


def test_a_connection_factory_alone_has_nothing_to_listen_on(pg_dsn: str) -> None:
    """With only a factory, cached admission asks every call and watch() asks for listen_dsn."""
    store = PostgresStorage(connection_factory=lambda: psycopg.connect(pg_dsn))
    policy = guarded(store, admission="cached")

    @policy
    def ok() -> str:
        return "ok"

    assert ok() == "ok"
    assert not store.listening()
    with pytest.raises(TypeError, match="listen_dsn"):
        store.watch(timeout=0.1)
    listened = PostgresStorage(
        connection_factory=lambda: psycopg.connect(pg_dsn), listen_dsn=pg_dsn
    )
    try:
        guarded(listened, admission="cached")
        assert listened.wait_listening(10)
    finally:
        listened.close()
