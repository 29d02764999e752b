"""The database failing under live traffic: stopped, black-holed, exhausted, locked, read-only.

Every test breaks a real PostgreSQL while calls flow and checks the same guarantees:
only the function's own exceptions reach callers, no call waits longer than the
timeout that applies, calls skip the database once the outage is known, the
``resilient_circuit`` loggers say one WARNING per outage and one INFO on recovery,
and afterwards the same policy objects record and share state again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError, _installer
from resilient_circuit.storage import PostgresStorage

from ._fleet_net import FaultyProxy, StoppableServer, faulty_proxy
from ._fleet_traffic import LOOP_STALL, OwnError, Traffic, blocking_pool_uses, loop_lag
from ._helpers import wait_for

KEY = "payments"
NAMESPACE = "outage"
MARGIN = 0.75  # seconds a busy two-core machine may add to a wait the library bounds

Logs = Callable[[], list[tuple[str, float]]]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Logs:
    """The levels and times of the records of the ``resilient_circuit`` loggers."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")

    def read() -> list[tuple[str, float]]:
        return [
            (record.levelname, record.created)
            for record in caplog.records
            if record.name.startswith("resilient_circuit")
        ]

    return read


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[FaultyProxy]:
    """A proxy in front of the test database that can refuse, drop or black-hole."""
    with faulty_proxy(pg_dsn) as made:
        yield made


@pytest.fixture(scope="module")
def stoppable() -> Iterator[StoppableServer]:
    """A dedicated embedded PostgreSQL that tests may stop and start again."""
    server = StoppableServer()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def stoppable_dsn(stoppable: StoppableServer) -> Iterator[str]:
    """A fresh database with the schema installed on the stoppable server."""
    name = f"rc_outage_{uuid.uuid4().hex}"
    with psycopg.connect(stoppable.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(stoppable.dsn, dbname=name)
    with psycopg.connect(dsn) as conn:
        _installer.install(conn)
    yield dsn
    if not stoppable.running:
        stoppable.start()
    with psycopg.connect(stoppable.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def make_store() -> Iterator[Callable[..., PostgresStorage]]:
    """Stores closed after the test."""
    made: list[PostgresStorage] = []

    def make(dsn: str, **kwargs: Any) -> PostgresStorage:
        kwargs.setdefault("namespace", NAMESPACE)
        store = PostgresStorage(dsn, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


# ------------------------------------------------------------------------------- helpers


def count_attempts(monkeypatch: pytest.MonkeyPatch, store: PostgresStorage) -> list[float]:
    """When each statement went for a connection (a skipped one never asks the pool)."""
    attempts: list[float] = []
    real_pool, real_apool = store.pool, store.apool

    def pool() -> Any:
        attempts.append(time.time())
        return real_pool()

    async def apool() -> Any:
        attempts.append(time.time())
        return await real_apool()

    monkeypatch.setattr(store, "pool", pool)
    monkeypatch.setattr(store, "apool", apool)
    return attempts


def calls_seen(traffic: Traffic, since: float = 0.0, count: int = 20) -> None:
    """Wait until ``count`` calls that started at ``since`` (wall clock) or later returned."""
    assert wait_for(lambda: sum(traffic.outcomes(since).values()) >= count, 15.0), traffic.outcomes(
        since
    )


def recovered(store: PostgresStorage, timeout: float = 12.0) -> bool:
    """Wait until the store has heard from the database again (traffic keeps flowing)."""
    return wait_for(lambda: store.outage.down_since is None, timeout)


def outage_known(logs: Logs, timeout: float = 10.0) -> float:
    """Wait for the WARNING that opens an outage; return its time."""
    assert wait_for(lambda: any(level == "WARNING" for level, _ in logs()), timeout), logs()
    return next(at for level, at in logs() if level == "WARNING")


def counters(dsn: str, key: str = KEY) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (key, NAMESPACE),
        ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def terminate_pool_connections(admin_dsn: str, dsn: str) -> int:
    """pg_terminate_backend every connection the library opened to ``dsn``'s database."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'resilient_circuit'",
            [dbname],
        ).fetchall()
    return len(rows)


def assert_records_and_shares_again(
    policy: CircuitProtectorPolicy, dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """The policy object that lived through the outage records again and sees a peer's trip."""
    events: list[tuple[CircuitState, CircuitState]] = []
    policy._on_status_change = lambda p, old, new: events.append((old, new))
    before = counters(dsn)
    ran: list[int] = []

    @policy
    def call(n: int) -> int:
        ran.append(n)
        return n

    for n in range(5):
        assert call(n) == n
    assert counters(dsn) == (before[0] + 5, before[1])
    peer = CircuitProtectorPolicy(
        resource_key=policy.resource_key,
        storage=make_store(dsn),
        cooldown=timedelta(minutes=5),
    )
    peer.status = CircuitState.OPEN
    with pytest.raises(ProtectedCallError):
        call(99)
    assert ran == list(range(5))
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]


def assert_one_outage(logs: Logs) -> None:
    assert [level for level, _ in logs()] == ["WARNING", "INFO"], logs()


def assert_only_own_errors(traffic: Traffic, bound: float) -> None:
    assert traffic.unexpected == []
    assert traffic.longest_wait() <= bound + MARGIN, traffic.longest_wait()


def policy_for(store: PostgresStorage, **kwargs: Any) -> CircuitProtectorPolicy:
    # Limits the traffic cannot reach (a failure in four, never half of 1000), so the
    # breaker stays CLOSED and every call it admits runs.
    kwargs.setdefault("failure_limit", Fraction(1, 2))
    kwargs.setdefault("window_size", 1000)
    return CircuitProtectorPolicy(resource_key=KEY, storage=store, **kwargs)


# --------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_server_stopped_and_started_while_sync_and_async_calls_flow(
    stoppable: StoppableServer,
    stoppable_dsn: str,
    make_store: Callable[..., PostgresStorage],
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pg_ctl stop mid-traffic, then start: calls never fail or hang, one WARNING, one INFO."""
    store = make_store(stoppable_dsn)
    policy = policy_for(store)
    attempts = count_attempts(monkeypatch, store)
    with Traffic(policy, threads=3, tasks=3) as traffic:
        calls_seen(traffic)
        stoppable.stop()
        known = outage_known(logs)
        time.sleep(2.5)
        restarted = time.time()
        stoppable.start()
        assert recovered(store), logs()
        calls_seen(traffic, time.time())
    assert_only_own_errors(traffic, store.connect_timeout)
    assert traffic.outcomes(known, restarted).keys() <= {"ok", "own"}
    # Once the outage was known, calls went on without the database: only a few
    # callers (those already waiting, then one probe per backoff) asked the pool.
    during = [at for at in attempts if known < at < restarted]
    assert len(during) <= 6 + 8, len(during)
    assert sum(traffic.outcomes(known, restarted).values()) > 10 * len(during)
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, stoppable_dsn, make_store)


@pytest.mark.slow
def test_blackholed_database_costs_a_call_at_most_the_connect_timeout(
    proxy: FaultyProxy,
    pg_dsn: str,
    make_store: Callable[..., PostgresStorage],
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections that hang (no answer at all) cost a call at most the 2 s connect timeout."""
    store = make_store(proxy.dsn())
    assert store.connect_timeout == 2.0
    policy = policy_for(store)
    attempts = count_attempts(monkeypatch, store)
    with Traffic(policy, threads=4) as traffic:
        calls_seen(traffic)
        proxy.set_mode("blackhole")
        proxy.drop()
        known = outage_known(logs)
        time.sleep(4.5)
        restored = time.time()
        proxy.set_mode("forward")
        assert recovered(store), logs()
    assert_only_own_errors(traffic, store.connect_timeout)
    during = [at for at in attempts if known < at < restored]
    assert len(during) <= 4 + 8, len(during)
    assert sum(traffic.outcomes(known, restored).values()) > 10 * len(during)
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_fail_open_runs_every_call_while_the_database_refuses(
    proxy: FaultyProxy, pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """on_storage_error='open' (the default): calls run unprotected and their results return."""
    store = make_store(proxy.dsn())
    policy = policy_for(store)
    assert policy.on_storage_error == "open"
    with Traffic(policy, threads=2, tasks=2) as traffic:
        calls_seen(traffic)
        proxy.set_mode("refuse")
        proxy.drop()
        known = outage_known(logs)
        calls_seen(traffic, known)
        restored = time.time()
        proxy.set_mode("forward")
        assert recovered(store), logs()
    assert_only_own_errors(traffic, store.connect_timeout)
    during = traffic.outcomes(known, restored)
    assert set(during) == {"ok", "own"}, during
    assert len(traffic.ran) == len(traffic.seen)
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_fail_closed_rejects_while_the_database_refuses(
    proxy: FaultyProxy, pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """on_storage_error='closed': calls are rejected unrun until the database answers again."""
    store = make_store(proxy.dsn())
    policy = policy_for(store, on_storage_error="closed")
    with Traffic(policy, threads=2, tasks=2) as traffic:
        calls_seen(traffic)
        proxy.set_mode("refuse")
        proxy.drop()
        known = outage_known(logs)
        calls_seen(traffic, known)
        restored = time.time()
        proxy.set_mode("forward")
        assert recovered(store), logs()
        back = time.time()
        calls_seen(traffic, back + 0.05)
    assert_only_own_errors(traffic, store.connect_timeout)
    assert traffic.outcomes(known, restored).keys() == {"rejected"}
    assert traffic.outcomes(back + 0.05).keys() <= {"ok", "own"}
    rejected = sum(each.outcome == "rejected" for each in traffic.seen)
    assert len(traffic.ran) == len(traffic.seen) - rejected
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_local_mode_runs_an_in_memory_breaker_until_the_database_returns(
    proxy: FaultyProxy, pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """on_storage_error='local': failures trip an in-memory twin; the database row is untouched."""
    store = make_store(proxy.dsn())
    policy = CircuitProtectorPolicy(
        resource_key=KEY,
        storage=store,
        failure_limit=Fraction(2, 3),
        cooldown=timedelta(minutes=5),
        on_storage_error="local",
    )
    ran: list[bool] = []

    @policy
    def call(ok: bool) -> str:
        ran.append(ok)
        if not ok:
            raise OwnError(len(ran))
        return "ok"

    assert call(True) == "ok"
    proxy.set_mode("refuse")
    proxy.drop()
    # The same configuration, in memory: two failures in a window of three trip it.
    started = time.monotonic()
    with pytest.raises(OwnError):
        call(False)
    assert time.monotonic() - started <= store.connect_timeout + MARGIN
    assert call(True) == "ok"
    with pytest.raises(OwnError):
        call(False)
    with pytest.raises(ProtectedCallError) as rejected:
        call(True)
    assert rejected.value.retry_after is not None
    assert rejected.value.retry_after > timedelta(minutes=4)
    assert ran == [True, False, True, False]
    assert [level for level, _ in logs()] == ["WARNING"]
    # The shared row never saw the local trip.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT state, generation, execution_log FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (KEY, NAMESPACE),
        ).fetchone()
    assert row == ("CLOSED", 0, [True])
    proxy.set_mode("forward")

    def answered() -> bool:
        try:
            call(True)
        except ProtectedCallError:  # the local twin, until the database answers
            return False
        return store.outage.down_since is None

    assert wait_for(answered, 12.0)
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_exhausted_pool_is_an_outage_like_any_other(
    pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """max_connections=1 with the connection held: calls wait the pool timeout once, then skip."""
    store = make_store(pg_dsn, max_connections=1)
    policy = policy_for(store)
    traffic = Traffic(policy, threads=0)
    traffic.call_once()
    with store.pool().connection(timeout=5):
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            traffic.call_once()
            time.sleep(0.005)
        assert [level for level, _ in logs()] == ["WARNING"]
    assert wait_for(lambda: (traffic.call_once(), store.outage.down_since is None)[1], 12.0)
    assert_only_own_errors(traffic, store.connect_timeout)
    outcomes = traffic.outcomes()
    assert outcomes.keys() == {"ok", "own"}
    slow = [each for each in traffic.seen if each.waited > store.connect_timeout / 2]
    assert 1 <= len(slow) <= 4, slow
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_row_locked_past_the_statement_timeout(
    pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """A session holding the row lock makes records time out; calls go on, one outage is logged."""
    store = make_store(pg_dsn, statement_timeout=0.5)
    policy = policy_for(store)
    with Traffic(policy, threads=1, tasks=1) as traffic:
        calls_seen(traffic)
        with psycopg.connect(pg_dsn) as locker:
            locker.execute(
                "SELECT * FROM rc_circuit_breakers"
                " WHERE resource_key = %s AND namespace = %s FOR UPDATE",
                (KEY, NAMESPACE),
            )
            known = outage_known(logs)
            time.sleep(2.5)
            locker.rollback()
        assert recovered(store), logs()
    assert known
    assert_only_own_errors(traffic, store.statement_timeout)
    assert traffic.outcomes().keys() == {"ok", "own"}
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_connections_terminated_while_functions_run(
    pg_dsn: str,
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    logs: Logs,
) -> None:
    """pg_terminate_backend of the connection recording a call's outcome, while the
    statement runs: the call returns its result; the outcome is lost, an outage.

    (A connection ended while it waits idle in the pool is replaced before use, no
    outage: the statement is held here on a row lock until it is terminated.)"""
    store = make_store(pg_dsn)
    policy = policy_for(store)
    terminated: list[int] = []
    locked = threading.Event()
    threads: list[threading.Thread] = []

    def terminate_the_recording() -> None:
        dbname = conninfo_to_dict(pg_dsn)["dbname"]
        with (
            psycopg.connect(pg_dsn) as holder,
            psycopg.connect(pg_admin_dsn, autocommit=True) as admin,
        ):
            holder.execute(
                "SELECT 1 FROM rc_circuit_breakers"
                " WHERE resource_key = %s AND namespace = %s FOR UPDATE",
                (KEY, NAMESPACE),
            )
            locked.set()

            def waiting() -> list[int]:
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                    " AND application_name = 'resilient_circuit' AND wait_event_type = 'Lock'",
                    [dbname],
                ).fetchall()
                return [row[0] for row in rows]

            assert wait_for(lambda: len(waiting()) == 1, 10.0)
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [waiting()]
            ).fetchall()
            terminated.append(len(rows))
            holder.rollback()

    @policy
    def call(n: int) -> int:
        if n == 3:
            # Its outcome's round trip waits on the row lock until it is terminated.
            threads.append(threading.Thread(target=terminate_the_recording, daemon=True))
            threads[0].start()
            assert locked.wait(10.0)
        return n

    for n in range(3):
        assert call(n) == n
    assert call(3) == 3  # its outcome could not be recorded; the caller never knows
    threads[0].join(10.0)
    assert terminated == [1]
    assert [level for level, _ in logs()] == ["WARNING"]
    assert wait_for(lambda: (call(4), store.outage.down_since is None)[1], 12.0)
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


def test_connections_dropped_under_concurrent_traffic(
    proxy: FaultyProxy, pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """Every pooled connection cut at once under threads and tasks: one WARNING, one INFO."""
    store = make_store(proxy.dsn(), max_connections=8)
    policy = policy_for(store)
    with Traffic(policy, threads=6, tasks=4, pause=0.001) as traffic:
        calls_seen(traffic, count=100)
        proxy.drop()
        outage_known(logs)
        assert recovered(store), logs()
        calls_seen(traffic, time.time(), count=100)
    assert_only_own_errors(traffic, store.connect_timeout)
    assert traffic.outcomes().keys() == {"ok", "own"}
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


@pytest.mark.slow
def test_read_only_database(
    pg_dsn: str,
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    logs: Logs,
) -> None:
    """A database turned read-only (a demoted primary) is one outage, not one per backoff."""
    store = make_store(pg_dsn)
    policy = policy_for(store)
    dbname = sql.Identifier(conninfo_to_dict(pg_dsn)["dbname"])
    with Traffic(policy, threads=2, tasks=2) as traffic:
        calls_seen(traffic)
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(dbname)
            )
        terminate_pool_connections(pg_admin_dsn, pg_dsn)
        outage_known(logs)
        time.sleep(2.0)
        frozen = counters(pg_dsn)
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(dbname)
            )
        terminate_pool_connections(pg_admin_dsn, pg_dsn)
        assert recovered(store), logs()
        calls_seen(traffic, time.time())
    assert_only_own_errors(traffic, store.connect_timeout)
    assert traffic.outcomes().keys() == {"ok", "own"}
    assert sum(counters(pg_dsn)) > sum(frozen)
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)


@pytest.mark.slow
async def test_event_loop_is_never_blocked_by_an_outage(
    proxy: FaultyProxy, pg_dsn: str, make_store: Callable[..., PostgresStorage], logs: Logs
) -> None:
    """Coroutines ride a black-holed database out without stalling their loop."""
    store = make_store(proxy.dsn())
    policy = policy_for(store)
    traffic = Traffic(policy, threads=0)

    async def calls(until: float) -> None:
        while time.monotonic() < until:
            await traffic.acall_once()
            await asyncio.sleep(0.002)

    blocking = blocking_pool_uses(store)
    async with loop_lag() as worst:
        await calls(time.monotonic() + 0.3)
        proxy.set_mode("blackhole")
        proxy.drop()
        await asyncio.gather(*(calls(time.monotonic() + 3.0) for _ in range(8)))
        proxy.set_mode("forward")
        deadline = time.monotonic() + 12.0
        while store.outage.down_since is not None and time.monotonic() < deadline:
            await calls(time.monotonic() + 0.1)
        await calls(time.monotonic() + 0.2)
    await store.aclose()
    assert store.outage.down_since is None
    assert blocking == []
    assert worst() < LOOP_STALL, worst()
    assert_only_own_errors(traffic, store.connect_timeout)
    assert traffic.outcomes().keys() == {"ok", "own"}
    assert_one_outage(logs)
    assert_records_and_shares_again(policy, pg_dsn, make_store)
