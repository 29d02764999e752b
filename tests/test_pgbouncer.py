"""The PostgreSQL store through a real PgBouncer in transaction pooling mode.

PgBouncer (the Debian package, 1.18 here) refuses unknown startup parameters such as
``options``, runs each transaction on whichever server connection is free (so a
statement prepared on one is missing on the next), and cannot deliver LISTEN
notifications. These tests run only when selected: ``make test-pgbouncer``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.retry_budget import BudgetUnavailable, PostgresBudgetStore
from resilient_circuit.storage import PostgresStorage
from tests._helpers import wait_for
from tests._pgbouncer import PgBouncer

pytestmark = pytest.mark.pgbouncer


@pytest.fixture(scope="module")
def pgbouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """One PgBouncer for the module, in front of the suite's server."""
    try:
        bouncer = PgBouncer(pg_admin_dsn)
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    bouncer.start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def bounced_dsn(pgbouncer: PgBouncer, pg_dsn: str) -> str:
    """The test's database (schema installed) through PgBouncer."""
    return pgbouncer.dsn(pg_dsn)


@pytest.fixture
def make_store() -> Iterator[Callable[..., PostgresStorage]]:
    """Stores closed after the test."""
    made: list[PostgresStorage] = []

    def make(dsn: str, **kwargs: Any) -> PostgresStorage:
        kwargs.setdefault("namespace", "bouncer")
        store = PostgresStorage(dsn, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def trip(policy: CircuitProtectorPolicy) -> None:
    @policy
    def fail() -> None:
        raise RuntimeError("down")

    for _ in range(policy.window_size):
        try:
            fail()
        except ProtectedCallError:
            return  # tripped by failures that other stores' calls joined
        except RuntimeError:
            pass


def rejects(policy: CircuitProtectorPolicy) -> bool:
    @policy
    def ok() -> str:
        return "ok"

    try:
        ok()
    except ProtectedCallError:
        return True
    return False


def policy(store: PostgresStorage, key: str, **kwargs: Any) -> CircuitProtectorPolicy:
    from datetime import timedelta
    from fractions import Fraction

    kwargs.setdefault("cooldown", timedelta(seconds=30))
    return CircuitProtectorPolicy(
        resource_key=key, storage=store, failure_limit=Fraction(1, 2), window_size=4, **kwargs
    )


def statement_timeouts_seen(dsn: str) -> set[str]:
    """The statement_timeout of five statements of a new client of PgBouncer: each may
    run on a server connection an earlier client used."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return {str(conn.execute("SHOW statement_timeout").fetchone()[0]) for _ in range(5)}  # type: ignore[index]


def test_pgbouncer_refuses_startup_options(bounced_dsn: str) -> None:
    """The fixture is a strict PgBouncer: a session setting sent at startup is refused."""
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(bounced_dsn, options="-c statement_timeout=1000", connect_timeout=5)
    with psycopg.connect(bounced_dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        assert row[0] != conn.info.backend_pid


def test_strict_mode_through_pgbouncer_shares_breakers(
    bounced_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two stores (two pools) through PgBouncer share one breaker in strict mode, quietly."""
    caplog.set_level(logging.INFO, logger="resilient_circuit.storage")
    store_a = make_store(bounced_dsn)
    a = policy(store_a, "strict")
    b = policy(make_store(bounced_dsn), "strict")
    assert not rejects(b)
    trip(a)
    assert a.status is CircuitState.OPEN
    assert rejects(b)
    assert b.status is CircuitState.OPEN
    # Holding the OPEN verdict tried LISTEN, which a pooler cannot serve: that is no
    # loss to strict admission, so it is said at INFO, not as a WARNING.
    assert wait_for(lambda: store_a._listener is not None and store_a._listener.refused, 10.0)
    pooler = [r for r in caplog.records if "pooler" in r.getMessage()]
    assert pooler
    assert all(r.levelno < logging.WARNING for r in pooler)


def test_concurrent_calls_through_pgbouncer_never_meet_a_missing_prepared_statement(
    bounced_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """Many threads through PgBouncer: prepared statements are off, so none goes missing."""
    store = make_store(bounced_dsn, max_connections=8)
    guarded = policy(store, "threads")
    errors: list[BaseException] = []

    @guarded
    def ok() -> str:
        return "ok"

    def worker() -> None:
        try:
            for _ in range(40):
                assert ok() == "ok"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    snap = guarded.snapshot()
    assert snap.successes == 8 * 40
    with store._get_connection() as conn:
        assert conn.prepare_threshold is None


def test_session_timeouts_do_not_leak_through_pgbouncer(
    bounced_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """Behind PgBouncer the store sets no session setting on shared server connections."""
    store = make_store(bounced_dsn, statement_timeout=0.123)
    policy(store, "leak").reset()
    assert statement_timeouts_seen(bounced_dsn) == {"0"}  # never the store's 123 ms


def test_cached_mode_without_listen_dsn_falls_back_to_strict_with_one_warning(
    bounced_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cached admission through PgBouncer alone: one WARNING, then every call asks the database."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit.storage")
    store_a, store_b = make_store(bounced_dsn), make_store(bounced_dsn)
    a = policy(store_a, "cached", admission="cached")
    b = policy(store_b, "cached", admission="cached")
    assert not rejects(b)
    assert wait_for(lambda: store_b._listener is not None and store_b._listener.refused, 10.0)
    assert not store_b.listening()
    trip(a)
    # No notification could reach b: it sees the trip because it asks on every call.
    assert rejects(b)
    for _ in range(5):
        assert not rejects(policy(store_b, "other", admission="cached"))
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "pooler" in r.getMessage()
    ]
    assert len(warnings) == 2  # one per store, never one per call
    assert all("RC_DB_LISTEN_DSN" in r.getMessage() for r in warnings)


def test_cached_mode_with_a_direct_listen_dsn_is_kept_honest_by_notify(
    bounced_dsn: str,
    pg_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Statements through PgBouncer, LISTEN on a direct connection: cached verdicts are revoked."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit.storage")
    store_a = make_store(bounced_dsn)
    store_b = make_store(bounced_dsn, listen_dsn=pg_dsn)
    a = policy(store_a, "listened")
    b = policy(store_b, "listened", admission="cached")
    assert store_b.wait_listening(10)
    assert not rejects(b)
    trip(a)
    assert wait_for(lambda: rejects(b), 10.0)
    assert not [r for r in caplog.records if "pooler" in r.getMessage()]


def test_batched_recording_through_pgbouncer(
    bounced_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """Batched outcomes flush through PgBouncer and trip the breaker another store sees."""
    store_a, store_b = make_store(bounced_dsn), make_store(bounced_dsn)
    a = policy(store_a, "batched", recording="batched")
    b = policy(store_b, "batched")

    @a
    def ok() -> str:
        return "ok"

    for _ in range(10):
        assert ok() == "ok"
    store_a.flush()
    assert a.snapshot().successes == 10
    trip(a)
    store_a.flush()
    assert wait_for(lambda: rejects(b), 10.0)


_CHILD = """
import sys
from datetime import timedelta
from fractions import Fraction
from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError
from resilient_circuit.storage import PostgresStorage

store = PostgresStorage(sys.argv[1], namespace="bouncer")
policy = CircuitProtectorPolicy(resource_key="process", storage=store, window_size=4,
                                failure_limit=Fraction(1, 2), cooldown=timedelta(seconds=30))

@policy
def fail():
    raise RuntimeError("down")

for _ in range(4):
    try:
        fail()
    except (RuntimeError, ProtectedCallError):
        pass
print(policy.status.name)
store.close()
"""


def test_another_process_through_pgbouncer_shares_the_breaker(
    bounced_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """A breaker tripped by another process through PgBouncer rejects here."""
    here = policy(make_store(bounced_dsn), "process")
    assert not rejects(here)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, bounced_dsn],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OPEN"
    assert rejects(here)


def test_timeouts_bound_each_round_trip_through_pgbouncer(
    bounced_dsn: str,
    pg_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Behind PgBouncer the timeouts hold per round trip: a locked row fails open in time."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit.storage")
    store = make_store(bounced_dsn, statement_timeout=0.3)
    guarded = policy(store, "locked")

    @guarded
    def ok() -> str:
        return "ok"

    assert ok() == "ok"
    with psycopg.connect(pg_dsn) as locker:
        locker.execute("SELECT * FROM rc_circuit_breakers WHERE resource_key = 'locked' FOR UPDATE")
        started = time.monotonic()
        assert ok() == "ok"  # the record times out on the lock: the call still succeeds
        assert time.monotonic() - started < 2.0
        locker.rollback()
    outages = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outages) == 1
    assert "timeout" in outages[0].getMessage()  # the statement's or the lock's


async def test_coroutines_through_pgbouncer(
    bounced_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """Async calls through PgBouncer trip the breaker another store sees, bounded in time."""
    store = make_store(bounced_dsn, statement_timeout=0.5)
    other = make_store(bounced_dsn)
    guarded = policy(store, "async")

    @guarded
    async def fail() -> None:
        raise RuntimeError("down")

    for _ in range(guarded.window_size):
        try:
            await fail()
        except ProtectedCallError:
            break
        except RuntimeError:
            pass
    assert rejects(policy(other, "async"))
    snap = await guarded._breaker.asnapshot()
    assert snap.state is CircuitState.OPEN
    await store.aclose()


async def test_timeouts_bound_each_async_round_trip_through_pgbouncer(
    bounced_dsn: str, pg_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """The coroutine path sets its timeouts per round trip too: a locked row fails open in time."""
    store = make_store(bounced_dsn, statement_timeout=0.3)
    guarded = policy(store, "async_locked")

    @guarded
    async def ok() -> str:
        return "ok"

    assert await ok() == "ok"
    with psycopg.connect(pg_dsn) as locker:
        locker.execute(
            "SELECT * FROM rc_circuit_breakers WHERE resource_key = 'async_locked' FOR UPDATE"
        )
        started = time.monotonic()
        assert await ok() == "ok"
        assert time.monotonic() - started < 2.0
        locker.rollback()
    assert store.outage.down_since is not None or store.outage.up_since > started
    await store.aclose()


def test_budget_timeouts_do_not_leak_through_pgbouncer(bounced_dsn: str) -> None:
    """Behind PgBouncer a retry budget sets no session setting on shared server connections."""
    store = PostgresBudgetStore(bounced_dsn, statement_timeout=timedelta(milliseconds=123))
    try:
        for _ in range(3):
            store.settle("bouncer", "leak", 1, 0.2, 1.0, True)
    finally:
        store.close()
    assert statement_timeouts_seen(bounced_dsn) == {"0"}  # never the store's 123 ms


def test_budget_timeouts_bound_each_round_trip_through_pgbouncer(
    bounced_dsn: str, pg_dsn: str
) -> None:
    """A budget row another session holds locked: behind PgBouncer the withdrawal fails
    on its own timeout (the budget then falls back to memory) instead of waiting."""
    store = PostgresBudgetStore(bounced_dsn, statement_timeout=timedelta(milliseconds=300))
    locked, done = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with psycopg.connect(pg_dsn) as locker:
            locker.execute(
                "SELECT * FROM rc_retry_budgets WHERE name = 'locked' AND namespace = 'bouncer'"
                " FOR UPDATE"
            )
            locked.set()
            done.wait(60)  # a withdrawal that never times out would wait for this
            locker.rollback()

    holder = threading.Thread(target=hold_the_row)
    try:
        store.settle("bouncer", "locked", 0, 0.2, 1.0, False)  # the row exists
        holder.start()
        assert locked.wait(30)
        with pytest.raises(BudgetUnavailable, match="timeout"):
            store.settle("bouncer", "locked", 0, 0.2, 1.0, True)
    finally:
        done.set()
        if holder.is_alive():
            holder.join(60)
        store.close()
