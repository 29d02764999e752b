"""A sync caller's connection stays out of the pool between two round trips (parked):
the pool's limits, fairness, idle rules and fork safety must hold as if it went back."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres import connection
from tests._helpers import wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(pg_dsn, namespace="parked", max_connections=1, connect_timeout=5.0)
    yield made
    made.close()


def _backend_pid(store: PostgresStorage) -> int:
    with store._get_connection() as conn:
        return conn.info.backend_pid


def test_threads_waiting_in_the_pool_are_handed_the_parked_connection(
    store: PostgresStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Four threads, one connection: a caller that finds none parked waits in the pool,
    and whoever finishes hands the connection over there rather than parking it. Were it
    parked, the waiter would get it only once it is given back idle (an hour here): its
    wait for the pool would end in a timeout, an outage."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(connection, "PARKED_FOR", 3600.0)
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    results: list[str] = []

    def calling() -> None:
        for _ in range(40):
            results.append(call())

    threads = [threading.Thread(target=calling) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == ["ok"] * 160
    assert store.outage.down_since is None
    assert [r.getMessage() for r in caplog.records] == []


def test_a_parked_connection_goes_back_to_the_pool_when_idle(
    store: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle, it is the pool's again (whose idle timeout then closes it), with no call."""
    monkeypatch.setattr(connection, "PARKED_FOR", 0.2)
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    assert call() == "ok"
    pool = store._pools.sync()
    assert wait_for(lambda: pool.get_stats().get("pool_available", 0) == 1, 10.0)
    assert call() == "ok"  # and taken again from the pool


def test_the_pool_lends_a_connection_the_store_parked(store: PostgresStorage) -> None:
    """max_connections=1, the connection parked: the application's ``pool()`` gets it."""
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    pid = [call(), _backend_pid(store)][1]
    with store.pool().connection(timeout=0.5) as conn:
        assert conn.info.backend_pid == pid
    assert call() == "ok"


def test_a_broken_parked_connection_is_discarded(store: PostgresStorage, pg_dsn: str) -> None:
    """Its session ended by the server: the next call either sees the termination when it
    takes the connection (replaced before use) or, were the notice still on its way,
    fails on it once (an outage); either way a new connection is used after."""
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    call()
    pid = _backend_pid(store)
    call()  # parked again
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    call()  # replaced, or handled per on_storage_error ("open": it runs)
    assert wait_for(lambda: (call(), store.outage.down_since is None)[1], 15.0)
    assert _backend_pid(store) != pid


_FORKING = textwrap.dedent(
    """
    import json, os, sys
    from resilient_circuit import CircuitProtectorPolicy
    from resilient_circuit.storage import PostgresStorage

    store = PostgresStorage(sys.argv[1], namespace="parked", max_connections=1)
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")

    def pid():
        with store._get_connection() as conn:
            return conn.info.backend_pid

    call()
    parent = pid()
    call()  # parked when the process forks
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        seen = [call() for _ in range(5)]
        os.write(write, json.dumps({"calls": seen, "pid": pid()}).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    reply = json.loads(os.read(read, 4096))
    reply.update(status=status, parent=parent, after=[call() for _ in range(5)], again=pid())
    print(json.dumps(reply))
    """
)


def test_a_forked_child_never_uses_the_connection_its_parent_parked(pg_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORKING, pg_dsn],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["status"] == 0
    assert reply["calls"] == ["ok"] * 5
    assert reply["pid"] != reply["parent"]
    assert reply["after"] == ["ok"] * 5
    assert reply["again"] == reply["parent"]


def test_the_application_waiting_in_the_pool_is_handed_the_parked_connection(
    store: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_connections=1, a thread calling through the store all along: the application's
    own ``pool().connection()`` waits in the pool, where the store's next round trip must
    hand the connection over rather than park it again (parked, it would come back to
    the pool only once idle: an hour here, so a PoolTimeout)."""
    monkeypatch.setattr(connection, "PARKED_FOR", 3600.0)
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    call()
    pool = store.pool()  # taken once, as an application keeps it
    stop = threading.Event()
    calls: list[str] = []

    def calling() -> None:
        while not stop.is_set():
            calls.append(call())

    thread = threading.Thread(target=calling)
    thread.start()
    try:
        assert wait_for(lambda: len(calls) > 5, 30.0)
        for _ in range(5):
            with pool.connection(timeout=5.0) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop.set()
        thread.join(60)
    assert store.outage.down_since is None


def test_a_pool_kept_by_the_application_lends_a_connection_parked_since(
    store: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool taken from ``pool()`` before the store parked its connection: asking it
    for one gets the parked one, not a wait until it is idle for an hour."""
    monkeypatch.setattr(connection, "PARKED_FOR", 3600.0)
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    pool = store.pool()
    assert call() == "ok"  # parked now
    with pool.connection(timeout=2.0) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert call() == "ok"


def test_a_connection_out_while_the_pools_are_drained_is_not_parked(
    store: PostgresStorage,
) -> None:
    """The store drains its pools when a connection is lost, so that the connections
    opened before (most likely dead too) each fail no call once the database is back. One
    out on a round trip meanwhile is closed when given back, as the pool would close it,
    never parked for the next caller."""
    call = CircuitProtectorPolicy(resource_key="parked", storage=store)(lambda: "ok")
    call()
    pools = store._pools
    assert isinstance(pools, connection.Pools)
    conn = pools.take()
    pools.drain()
    pools.give(conn)
    assert conn not in pools._parked
    assert conn.closed
    assert call() == "ok"
