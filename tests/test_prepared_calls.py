"""A strict call's two statements run as prepared statements of the store's own, on its
direct connections: each argument and each column must mean what it means through
psycopg's cursor, and whatever happens to the session must not turn into a failed call."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import timedelta
from fractions import Fraction
from typing import Any, cast

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.exceptions import SchemaNotReady
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres import prepared

pytestmark = pytest.mark.postgres

NAMESPACE = "prepared"


class Side:
    """Where a test's calls run: threads (the sync pool), or one event loop running in a
    thread of its own (that loop's pool), driven from the test as plain calls."""

    def __init__(self, store: PostgresStorage, kind: str) -> None:
        self.store = store
        self.kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        if kind == "async":
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()

    def wrap(self, policy: CircuitProtectorPolicy, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``policy(fn)`` called as the side calls: directly, or awaited on its loop."""
        if self.loop is None:
            return policy(fn)

        async def coroutine(*args: Any) -> Any:
            return fn(*args)

        protected = policy(coroutine)
        return lambda *args: self._result(protected(*args))

    def _result(self, awaitable: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(awaitable, self.loop).result(30)

    def session(self, statement: str) -> list[tuple[Any, ...]]:
        """``statement``'s rows on the connection the store's calls use (there is one)."""
        if self.loop is None:
            with self.store._get_connection() as conn:
                cur = conn.execute(statement)
                return cur.fetchall() if cur.description else []

        async def on_loop() -> list[tuple[Any, ...]]:
            pool = await self.store.apool()
            async with pool.connection() as conn:
                cur = await conn.execute(statement)
                return await cur.fetchall() if cur.description else []

        return cast("list[tuple[Any, ...]]", self._result(on_loop()))

    def forget_prepared(self) -> None:
        """DEALLOCATE ALL on the calls' connection, and the store forgets it prepared."""
        if self.loop is None:
            with self.store._get_connection() as conn:
                conn.execute("DEALLOCATE ALL")
                cast(prepared.StoreConnection, conn).rc_prepared = None
            return

        async def on_loop() -> None:
            pool = await self.store.apool()
            async with pool.connection() as conn:
                await conn.execute("DEALLOCATE ALL")
                cast(prepared.AsyncStoreConnection, conn).rc_prepared = None

        self._result(on_loop())

    def close(self) -> None:
        if self.loop is not None:
            self._result(self.store.aclose())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
        self.store.close()


@pytest.fixture(params=["sync", "async"])
def side(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[Side]:
    made = Side(PostgresStorage(pg_dsn, namespace=NAMESPACE), request.param)
    yield made
    made.close()


@pytest.fixture
def sync_store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    yield made
    made.close()


def _prepared_names(side: Side) -> set[str]:
    # One call at a time: the pool lends its one connection again.
    return {row[0] for row in side.session("SELECT name FROM pg_prepared_statements")}


def _lifetime(pg_dsn: str, key: str) -> tuple[int, int]:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (key, NAMESPACE),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _strict(store: PostgresStorage, **options: object) -> CircuitProtectorPolicy:
    return CircuitProtectorPolicy(resource_key="svc", storage=store, **options)  # type: ignore[arg-type]


def test_strict_calls_run_the_stores_own_prepared_statements(side: Side, pg_dsn: str) -> None:
    call = side.wrap(
        _strict(side.store, failure_limit=Fraction(1, 2), window_size=4), lambda ok: ok or 1 / 0
    )
    for ok in (True, False, True):
        try:
            call(ok)
        except ZeroDivisionError:
            pass
    assert {"rc_acquire", "rc_record"} <= _prepared_names(side)
    assert _lifetime(pg_dsn, "svc") == (2, 1)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_without_prepared_statements_nothing_is_prepared(pg_dsn: str, kind: str) -> None:
    side = Side(PostgresStorage(pg_dsn, namespace=NAMESPACE, prepared_statements=False), kind)
    try:
        call = side.wrap(_strict(side.store), lambda: "ok")
        assert [call() for _ in range(3)] == ["ok"] * 3
        assert _prepared_names(side) == set()
        assert _lifetime(pg_dsn, "svc") == (3, 0)
    finally:
        side.close()


def test_statements_deallocated_on_the_session_are_prepared_again(
    side: Side, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """DEALLOCATE ALL sent on a connection the pool lends: the next calls prepare again."""
    call = side.wrap(_strict(side.store), lambda: "ok")
    call()
    side.session("DEALLOCATE ALL")
    assert _prepared_names(side) == set()
    assert [call() for _ in range(2)] == ["ok"] * 2
    assert {"rc_acquire", "rc_record"} <= _prepared_names(side)
    assert _lifetime(pg_dsn, "svc") == (3, 0)
    assert side.store.outage.down_since is None
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_a_function_dropped_after_first_use_raises_schema_not_ready(
    side: Side, pg_dsn: str
) -> None:
    ran: list[int] = []
    call = side.wrap(_strict(side.store), lambda: ran.append(1))
    call()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP FUNCTION rc_try_acquire(text, text)")
    with pytest.raises(SchemaNotReady, match="pg-setup"):
        call()
    assert ran == [1]
    assert side.store.outage.down_since is None


def test_a_rejection_reads_the_remaining_cooldown_from_the_reply(side: Side) -> None:
    policy = _strict(side.store, cooldown=timedelta(seconds=30))
    call = side.wrap(policy, lambda: "ok")
    call()
    policy.force(CircuitState.OPEN)
    with pytest.raises(ProtectedCallError) as caught:
        call()
    assert caught.value.state is CircuitState.OPEN
    assert caught.value.retry_after_ns is not None
    assert 20e9 < caught.value.retry_after_ns <= 30e9


@pytest.mark.parametrize(("pause", "state"), [(0.0, CircuitState.CLOSED), (0.03, "OPEN")])
def test_a_calls_duration_reaches_the_server(
    side: Side, pause: float, state: CircuitState | str
) -> None:
    """Slow calls trip the breaker, fast ones do not: the duration is sent as measured."""
    policy = _strict(
        side.store,
        failure_limit=Fraction(1, 1),
        window_size=2,
        slow_call_duration=timedelta(milliseconds=20),
        slow_call_limit=Fraction(1, 1),
        cooldown=timedelta(seconds=30),
    )
    call = side.wrap(policy, lambda: time.sleep(pause))
    for _ in range(2):
        call()
    assert policy.status is CircuitState(state)


def test_an_interruption_after_the_server_prepared_leaves_the_connection_usable(
    side: Side,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An interruption that lands once PREPARE is done but before the process notes it
    (Ctrl-C in a thread, a cancellation in a coroutine): the next call on that
    connection must not fail with 'prepared statement already exists'."""
    # Threads prepare at once, coroutines through the engine they await.
    name = "_prepare_now" if side.loop is None else "_prepare"
    real = getattr(prepared, name)

    def interrupted_now(*args: Any) -> None:
        real(*args)
        raise KeyboardInterrupt

    def interrupted(*args: Any) -> Any:
        yield from real(*args)
        raise asyncio.CancelledError

    call = side.wrap(_strict(side.store), lambda: "ok")
    call()  # the breaker's configuration stored: the next calls take the prepared path
    side.forget_prepared()
    monkeypatch.setattr(prepared, name, interrupted_now if side.loop is None else interrupted)
    with pytest.raises((KeyboardInterrupt, asyncio.CancelledError, futures.CancelledError)):
        call()
    monkeypatch.setattr(prepared, name, real)
    caplog.clear()
    assert [call() for _ in range(2)] == ["ok"] * 2
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert _lifetime(pg_dsn, "svc") == (3, 0)
    assert {"rc_acquire", "rc_record"} <= _prepared_names(side)


def test_ctrl_c_while_a_prepared_statement_waits_cancels_it_and_keeps_the_pool_usable(
    sync_store: PostgresStorage, pg_dsn: str
) -> None:
    """The record waits on a row lock held elsewhere; SIGINT reaches the caller, the
    statement is cancelled in the server, and the next calls run on a usable connection."""
    store = sync_store
    call = _strict(store)(lambda: "ok")
    call()
    with psycopg.connect(pg_dsn) as holder:
        holder.execute(
            "SELECT 1 FROM rc_circuit_breakers WHERE resource_key = 'svc' AND namespace = %s"
            " FOR UPDATE",
            (NAMESPACE,),
        )

        def interrupt_once_blocked() -> None:
            with psycopg.connect(pg_dsn, autocommit=True) as watcher:
                while not watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%rc_record%'"
                ).fetchone()[0]:  # type: ignore[index]
                    time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)

        thread = threading.Thread(target=interrupt_once_blocked)
        thread.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                call()
        finally:
            thread.join()
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
        assert waiting == (0,)
    assert [call() for _ in range(2)] == ["ok"] * 2
    assert store.outage.down_since is None
    assert _lifetime(pg_dsn, "svc") == (3, 0)
