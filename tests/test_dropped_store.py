"""A store the application drops without ``close()`` gives its threads and connections
back once collected, and never closes what another live store or a forked parent uses."""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage

pytestmark = pytest.mark.postgres

STORES = 5
# A bound on the wait for threads to end, not a measure of how fast they do.
WAIT = 30.0


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _until(done: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _sessions(dsn: str, application: str = "resilient_circuit") -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (application,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _same(value: int) -> int:
    return value


def _call_through_new_stores(dsn: str, namespace: str) -> list[weakref.ref[PostgresStorage]]:
    """Stores that made a call each (so their pools run), then dropped."""
    refs = []
    for n in range(STORES):
        store = PostgresStorage(dsn, namespace=namespace)
        policy = CircuitProtectorPolicy(resource_key=f"dropped-{n}", storage=store)
        assert policy(_same)(n) == n
        refs.append(weakref.ref(store))
    return refs


def test_dropped_stores_end_their_pool_threads(pg_shared_dsn: str) -> None:
    """Stores dropped without close() end their pools' worker threads once collected."""
    before = set(threading.enumerate())
    refs = _call_through_new_stores(pg_shared_dsn, f"dropped_{uuid.uuid4().hex[:8]}")
    assert _new_threads(before), "the stores' pools run threads of their own"
    gc.collect()
    assert all(ref() is None for ref in refs), "nothing keeps a dropped store alive"
    assert _until(lambda: not _new_threads(before)), _new_threads(before)


def test_dropped_stores_close_their_connections(pg_dsn: str) -> None:
    """Stores dropped without close() end their sessions on the server once collected."""
    _call_through_new_stores(pg_dsn, "dropped")
    assert _sessions(pg_dsn) >= 1
    gc.collect()
    assert _until(lambda: _sessions(pg_dsn) == 0)


def test_a_dropped_store_leaves_a_live_store_on_the_same_dsn_working(pg_dsn: str) -> None:
    """Dropping one store closes nothing that another store of the same DSN uses."""
    kept = PostgresStorage(pg_dsn, namespace="kept")
    policy = CircuitProtectorPolicy(resource_key="kept", storage=kept)
    try:
        assert policy(lambda: 1)() == 1
        _call_through_new_stores(pg_dsn, "dropped")
        gc.collect()
        for n in range(20):
            assert policy(_same)(n) == n
        with kept.pool().connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        kept.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_store_dropped_in_a_forked_child_leaves_the_parents_sessions(pg_dsn: str) -> None:
    """A child that drops its copy of the parent's store ends none of the parent's sessions."""
    store = PostgresStorage(pg_dsn, namespace="forked")
    policy = CircuitProtectorPolicy(resource_key="forked", storage=store)
    try:
        assert policy(lambda: 1)() == 1
        sessions = _sessions(pg_dsn)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                del policy, store
                gc.collect()
                time.sleep(0.2)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _sessions(pg_dsn) == sessions
        for n in range(5):
            assert policy(_same)(n) == n
    finally:
        store.close()
