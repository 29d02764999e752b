"""How the store connects: its connection settings, one sync pool, one async pool per loop.

Pools open on first use (constructing a store does no I/O). Sync callers share a
``ConnectionPool``; coroutines use an ``AsyncConnectionPool`` of their own event
loop, since an async pool belongs to the loop that opened it (never a thread).

Nothing is sent as a startup parameter but ``application_name``: connection poolers
such as PgBouncer refuse ``options``. The timeouts are set on each new connection
that reaches PostgreSQL directly (see ``setup_session``); through a pooler, on each
round trip instead, for its own transaction only (see ``Pools.scope``).

The sync pool holds at most ``max_connections``; the pools of all event loops draw
from one more budget of ``max_connections`` (a connection takes a share when it
opens and gives it back when it closes), however many loops the process runs. The
two are apart so that a blocking call made from a loop's own thread (``policy.status``
in a coroutine) never waits for connections that only that blocked loop could
release. Pools keep no connection open for its own sake (``min_size=0``) and close
those idle for ``idle_timeout``; an event loop's pool closes with its loop
(``asyncio.run`` ends it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from resilient_circuit._dsn import Dsn, redact
from resilient_circuit.storage.postgres.idle import ended_while_idle
from resilient_circuit.storage.postgres.loop_pool import (
    POOL_NAME,
    Budget,
    LoopPool,
    budgeted_connection_class,
)
from resilient_circuit.storage.postgres.outage import Attempts, connect_reason, connect_refusal
from resilient_circuit.storage.postgres.prepared import AsyncStoreConnection, StoreConnection

__all__ = ("Pools", "SyncPool", "close_with", "describe", "reaches_server", "setup_session")

logger = logging.getLogger("resilient_circuit.storage")

_IDLE = pq.TransactionStatus.IDLE
_INTRANS = pq.TransactionStatus.INTRANS
_INERROR = pq.TransactionStatus.INERROR
# psycopg's default prepare_threshold, which the store's connections keep unless told not to.
_PREPARE_THRESHOLD = 5
# How long a sync caller's connection stays out of the pool between calls: parked idle
# for longer, or out of the pool for longer since it was taken, it goes back (see
# ``Pools.take``), so that the pool's own rules (idle timeout, lifetime, fairness
# between threads) apply to it within about this delay.
PARKED_FOR = 1.0


def describe(dsn: str) -> str:
    """Where ``dsn`` points, for messages: host, port and database, never a password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL"
    host = info.get("host") or "localhost"
    return f"postgresql://{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


# A connection pooler (PgBouncer, and the like) answers the startup itself with a
# made-up backend PID, then runs each transaction on whichever server connection is
# free: the PID the client was given is not the server's. When it is, the connection
# reaches PostgreSQL directly and the timeouts become session settings; through a
# pooler a session setting would stick to a server connection that other clients
# use next, so none is set: each round trip sets them for its own transaction.
# Sent with the session's own search_path: every operator and function is spelled out
# in pg_catalog, so nothing planted in a writable schema can run instead.
_SESSION_SETUP = (
    "SELECT pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.=) %(pid)s,"
    " CASE WHEN pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.=) %(pid)s"
    " THEN pg_catalog.set_config('statement_timeout', %(timeout)s, false) END,"
    " CASE WHEN pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.=) %(pid)s"
    " THEN pg_catalog.set_config('lock_timeout', %(timeout)s, false) END"
)
_SERVER_PID = "SELECT pg_catalog.pg_backend_pid()"
_LOCAL_TIMEOUTS = (
    "SELECT pg_catalog.set_config('statement_timeout', %(timeout)s, true),"
    " pg_catalog.set_config('lock_timeout', %(timeout)s, true)"
)


@contextmanager
def local_timeouts(conn: psycopg.Connection[Any], timeout_ms: int) -> Iterator[None]:
    """The block's statements in one transaction whose timeouts are set for it alone.

    Pipelined where libpq can (14+): BEGIN, the settings, the statements and COMMIT
    then travel as one network round trip, and the results are read after the block.
    """
    pipeline = conn.pipeline() if psycopg.Pipeline.is_supported() else nullcontext()
    with pipeline, conn.transaction():
        conn.execute(_LOCAL_TIMEOUTS, {"timeout": str(timeout_ms)}, prepare=False)
        yield


@asynccontextmanager
async def alocal_timeouts(
    conn: psycopg.AsyncConnection[Any], timeout_ms: int
) -> AsyncIterator[None]:
    """The coroutine twin of ``local_timeouts``."""
    pipeline = conn.pipeline() if psycopg.AsyncPipeline.is_supported() else nullcontext()
    async with pipeline, conn.transaction():
        await conn.execute(_LOCAL_TIMEOUTS, {"timeout": str(timeout_ms)}, prepare=False)
        yield


def setup_session(conn: psycopg.Connection[Any], timeout_ms: int) -> bool:
    """Set the timeouts of a direct connection; True if it reaches PostgreSQL directly."""
    params = {"pid": conn.info.backend_pid, "timeout": str(timeout_ms)}
    row = conn.execute(_SESSION_SETUP, params, prepare=False).fetchone()
    return bool(row and row[0])


async def asetup_session(conn: psycopg.AsyncConnection[Any], timeout_ms: int) -> bool:
    """The coroutine twin of ``setup_session``."""
    params = {"pid": conn.info.backend_pid, "timeout": str(timeout_ms)}
    cur = await conn.execute(_SESSION_SETUP, params, prepare=False)
    row = await cur.fetchone()
    return bool(row and row[0])


def reaches_server(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` talks to PostgreSQL itself, not through a connection pooler."""
    row = conn.execute(_SERVER_PID, prepare=False).fetchone()
    return row is not None and row[0] == conn.info.backend_pid


_draining: set[asyncio.Future[None]] = set()
# Pools closing in the loop of the thread that closed the store (see Pools.close).
_closing: set[asyncio.Task[None]] = set()


def _closed() -> PoolClosed:
    return PoolClosed("the breaker storage was closed by close(): it opens no connection again")


def _drain_async(pool: AsyncConnectionPool) -> None:
    """Replace an async pool's connections, from inside its own event loop."""

    async def drain() -> None:
        try:
            await pool.drain()
        except Exception:  # pragma: no cover - a closed pool has nothing to replace
            pass

    task = asyncio.ensure_future(drain())
    _draining.add(task)
    task.add_done_callback(_draining.discard)


class SyncPool(ConnectionPool):
    """The sync callers' pool. Whoever asks it for a connection (a store's call, or the
    application through ``PostgresStorage.pool()``, even a pool object it kept) is
    counted as waiting, so that a connection parked meanwhile is handed to it, and
    first gets one the store parked rather than waiting until that one is idle."""

    def __init__(self, owner: Pools, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rc_owner = owner
        #: Why the last connection attempt failed (None once one succeeds): a caller
        #: that times out waiting is told this rather than the wait alone.
        self.rc_connect_failure: str | None = None
        #: Whether that failure was the server refusing the store as configured (see
        #: ``connect_refusal``), and how.
        self.rc_connect_refusal: str | None = None
        #: The attempts under way, which the pool's workers make in threads of their own.
        self.rc_attempts = Attempts(threading.Lock())

    def _connect(self, timeout: float | None = None) -> Any:
        attempt = self.rc_attempts.begin()
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            self.rc_connect_failure = self.rc_owner.describe_failure(exc)
            self.rc_connect_refusal = refusal = connect_refusal(exc)
            if refusal is not None:
                self._fail_waiting(exc)
            raise
        finally:
            self.rc_attempts.end(attempt)
        self.rc_connect_failure = self.rc_connect_refusal = None
        return conn

    def _fail_waiting(self, exc: Exception) -> None:
        """Give the callers waiting for a connection ``exc`` now, not a timeout later: the
        server refused the store as configured, and the next attempt would be refused
        too (as ``close`` fails them)."""
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for pos in waiting:
            pos.fail(exc)

    def _getconn_unchecked(self, timeout: float) -> Any:
        # Every connection leaves the pool here (the pool's own ``check`` hook would
        # sleep a second after each connection that fails it): one ended while it was
        # idle is replaced rather than handed out (see ``idle``).
        deadline = monotonic() + timeout
        while True:
            conn = super()._getconn_unchecked(deadline - monotonic())
            if not ended_while_idle(conn):
                return conn
            self.rc_discard(conn)
            self._check_open_getconn()  # closed meanwhile: no connection will come

    def rc_discard(self, conn: Any) -> None:
        """Close ``conn``, taken from this pool and ended while idle, and have the pool
        open another in its place, quietly: it is no outage."""
        conn.close()
        if self._maybe_close_connection(conn):
            return  # the pool is closed: nothing to replace
        # As a connection that failed the pool's check on its way out: counted as lost
        # and replaced (``putconn`` would warn that it was given back closed).
        self._putconn(conn, from_getconn=True)

    def getconn(self, timeout: float | None = None) -> Any:
        owner = self.rc_owner
        with owner.waiting():
            # Counted before looking: a caller that parks after this sees the count
            # and hands its connection to the pool, so to this caller.
            owner.unpark_one()
            conn: StoreConnection = super().getconn(timeout)  # type: ignore[assignment]
        # Lent until shown otherwise: the store's own callers clear it (``Pools.take``).
        conn.rc_lent = True
        return conn

    def putconn(self, conn: Any) -> None:
        if getattr(conn, "rc_lent", False):
            conn.rc_lent = False
            self.rc_owner.restore(conn)
        super().putconn(conn)


class _Waiting:
    """A caller of the sync pool's getconn, counted while it waits."""

    __slots__ = ("_pools",)

    def __init__(self, pools: Pools) -> None:
        self._pools = pools

    def __enter__(self) -> None:
        with self._pools._lock:
            self._pools._waiting += 1

    def __exit__(self, *exc: object) -> None:
        with self._pools._lock:
            self._pools._waiting -= 1


class Pools:
    """The store's connection pools: one for threads, one per running event loop."""

    def __init__(
        self,
        dsn: Dsn,
        *,
        connect_timeout: float,
        statement_timeout: float,
        max_connections: int,
        prepared_statements: bool | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.max_connections = max_connections
        self.prepared_statements = prepared_statements
        self.idle_timeout = idle_timeout
        # The event loops' pools share one budget: each loop's pool closes with its loop,
        # but loops come and go (asyncio.run per job), and live ones may overlap.
        self.budget = Budget(max_connections)
        self._async_class = budgeted_connection_class(self.budget)
        self.through_pooler: bool | None = None  # unknown until a connection is made
        self._lock = threading.Lock()
        self._sync: ConnectionPool | None = None
        # Sync callers' connections between two calls: taken from the pool, not given
        # back yet (see ``take``). Appended and popped without a lock (atomic on a list).
        self._parked: list[StoreConnection] = []
        self._waiting = 0  # callers in the pool's getconn: a parked connection is theirs
        self._sweeping = False  # a timer will give back the connections parked too long
        self._sweeper: threading.Timer | None = None
        # Set by close(), for good: no pool opens again (a call after it would open one
        # that nothing closes any more).
        self.closed = False
        self._async: dict[asyncio.AbstractEventLoop, LoopPool] = {}
        # One suspended async generator per loop: asyncio closes it (and so the pool)
        # when the loop shuts down.
        self._closers: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}

    def connect_kwargs(self) -> dict[str, Any]:
        """Every connection's settings: autocommit, UTF-8 and the store's timeouts."""
        # libpq's connect_timeout is whole seconds (2 at least); the pool's own
        # timeout bounds the wait more finely.
        return {
            "autocommit": True,
            "connect_timeout": max(2, round(self.connect_timeout)),
            "application_name": "resilient_circuit",
            # Whatever the DSN or the database's default asks: under SQL_ASCII psycopg
            # reads every text column as bytes, and only UTF-8 carries any key.
            "client_encoding": "UTF8",
            # Apart from the conninfo string, so that no message built from it shows it.
            **self.dsn.connect_kwargs(),
        }

    # -- each new connection ------------------------------------------------------------

    def describe_failure(self, exc: BaseException) -> str:
        """Why a connection attempt failed, in one line that never shows the password."""
        # libpq does not quote the password in these messages; masked all the same, as
        # psycopg's own log records of the same attempts are (see ``_dsn``).
        return redact(connect_reason(exc), self.dsn.password or "")

    def connect_refusal(
        self, pool: ConnectionPool | AsyncConnectionPool | None = None
    ) -> str | None:
        """Whether ``pool``'s last connection attempt (the sync pool's by default) was
        refused as configured: ``DATABASE_MISSING``, ``LOGIN_REFUSED`` or None."""
        source = self._sync if pool is None else pool
        found = getattr(source, "rc_connect_refusal", None)
        return found if isinstance(found, str) else None

    def connect_failure(
        self, pool: ConnectionPool | AsyncConnectionPool | None = None
    ) -> str | None:
        """Why ``pool``'s last connection attempt failed (the sync pool's by default), or
        None if it succeeded (or none was made)."""
        source = self._sync if pool is None else pool
        found = getattr(source, "rc_connect_failure", None)
        if isinstance(found, str):
            return found
        # None failed yet: a server that takes the TCP connection and then says nothing
        # (a hung or overloaded host, a half-open firewall) keeps the first attempt
        # waiting for libpq's connect_timeout, longer than a caller waits for the pool.
        attempts = getattr(source, "rc_attempts", None)
        waited = attempts.waited() if isinstance(attempts, Attempts) else None
        if waited is None:
            return None
        return f"the server has not answered a connection attempt begun {waited:.1f} s ago"

    def _configured(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], direct: bool
    ) -> None:
        # Behind a pooler (PgBouncer before 1.21, in transaction mode) a statement
        # prepared on one server connection is missing on the next: prepare nothing,
        # unless told to (a pooler that keeps them: PgBouncer 1.21+ with
        # max_prepared_statements).
        if self.prepared_statements is False or (self.prepared_statements is None and not direct):
            conn.prepare_threshold = None
        if self.through_pooler is None and not direct:
            logger.info(
                "breaker storage connects through a connection pooler:%s timeouts set for"
                " each round trip's own transaction",
                " prepared statements off," if conn.prepare_threshold is None else "",
            )
        self.through_pooler = not direct

    def _timeout_ms(self) -> int:
        # The server counts statement_timeout in whole milliseconds and reads 0 as
        # "none": round up, never down to 0.
        return max(1, math.ceil(self.statement_timeout * 1000))

    def scope(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """What one round trip runs in: as it is when direct, with local timeouts when pooled.

        Read the statements' results after the block: pipelined, they arrive at its end.
        """
        if self.through_pooler:
            return local_timeouts(conn, self._timeout_ms())
        return nullcontext()

    def ascope(self, conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[Any]:
        """The coroutine twin of ``scope``."""
        if self.through_pooler:
            return alocal_timeouts(conn, self._timeout_ms())
        return nullcontext()

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        direct = setup_session(conn, self._timeout_ms())
        self._configured(conn, direct)
        if isinstance(conn, StoreConnection):
            self._mark_direct(conn, direct)

    async def _aconfigure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        direct = await asetup_session(conn, self._timeout_ms())
        self._configured(conn, direct)
        if isinstance(conn, AsyncStoreConnection):
            self._mark_direct(conn, direct)

    def restore(self, conn: StoreConnection) -> None:
        """Undo what the application did to a connection it was lent, before the store's
        own calls run on it again: its transaction, its connection attributes and, on a
        direct connection, every session setting (``SET statement_timeout = 0``, ``SET
        ROLE``, prepared statements, ``LISTEN``, temporary tables); the store's timeouts
        are then set again. A connection that cannot be restored is closed (the pool then
        drops it)."""
        try:
            status = conn.pgconn.transaction_status
            if status in (_INTRANS, _INERROR):
                conn.rollback()
            elif status != _IDLE:
                return  # the pool closes it
            conn.autocommit = True
            conn.read_only = None
            conn.isolation_level = None
            conn.deferrable = None
            conn.row_factory = tuple_row
            conn.prepare_threshold = _PREPARE_THRESHOLD
            if not self.through_pooler:
                # Through a pooler the session is not the client's to reset; the store
                # sets its timeouts for each round trip there anyway.
                conn.execute("DISCARD ALL", prepare=False)
                # psycopg's cache still names the statements it prepared, which DISCARD
                # ALL deallocated: its next execution of one would ask for a statement
                # the session no longer has. psycopg clears its cache on a DISCARD ALL
                # only the first time the connection runs that query (later runs are
                # counted, not validated), so it is cleared here; each is prepared anew.
                conn._prepared.clear()
                conn.rc_prepared = None
                conn.rc_loaders = None
            self._configure(conn)
        except Exception as exc:
            logger.warning(
                "a connection lent by the breaker storage could not be reset (%s): closed",
                type(exc).__name__,
            )
            conn.close()

    @staticmethod
    def _mark_direct(conn: StoreConnection | AsyncStoreConnection, direct: bool) -> None:
        # A call's statements skip psycopg's cursor where nothing else must be sent
        # around them (see prepared.py).
        conn.rc_direct = (
            direct and conn.prepare_threshold is not None and conn.info.encoding == "utf-8"
        )

    def sync(self) -> ConnectionPool:
        """The pool of sync callers, opened (without waiting) on first use."""
        pool = self._sync
        if pool is None:
            with self._lock:
                if self.closed:
                    raise _closed()
                if self._sync is None:
                    self._sync = SyncPool(
                        self,
                        self.dsn.conninfo,
                        min_size=0,
                        max_size=self.max_connections,
                        max_idle=self.idle_timeout,
                        kwargs=self.connect_kwargs(),
                        connection_class=StoreConnection,
                        configure=self._configure,
                        timeout=self.connect_timeout,
                        reconnect_timeout=0,
                        name="resilient_circuit",
                        open=False,
                    )
                    self._sync.open(wait=False)
                pool = self._sync
        return pool

    # -- the sync callers' connections ----------------------------------------------
    #
    # The pool's getconn and putconn cost a call more CPU than the call's own statement
    # handling; a caller of the store takes a connection per round trip, twice per
    # strict call. Between two round trips a healthy connection is parked here instead:
    # still counted by the pool as in use (max_connections holds), the next caller of
    # any thread pops it without the pool. Parked connections go back to the pool when
    # a caller waits in the pool for one, when idle or out for ``PARKED_FOR``, after an
    # error, and when the pools are drained or closed; a forked child drops the whole
    # ``Pools`` (see ``abandon``), parked connections included.

    def take(self) -> StoreConnection:
        """A connection for one round trip: a parked one, else one from the pool.

        A parked connection that was ended meanwhile (the server restarted) is replaced
        before any statement is sent on it (see ``idle``), as the pool replaces its own.
        """
        while True:
            try:
                conn = self._parked.pop()
            except IndexError:
                break
            if not ended_while_idle(conn):
                return conn
            self._discard(conn)
        pool = self.sync()
        # The pool counts this caller as waiting and looks among the parked ones again.
        conn = pool.getconn(self.connect_timeout)  # type: ignore[assignment]
        conn.rc_lent = False
        conn.rc_pool = pool
        conn.rc_taken_at = monotonic()
        return conn

    def give(self, conn: StoreConnection) -> None:
        """After a round trip that succeeded: park ``conn``, or give it back to its pool."""
        now = monotonic()
        pool = conn.rc_pool
        if (
            # Broken or closed too: libpq reports no transaction status without a
            # working connection.
            conn.pgconn.transaction_status != _IDLE
            or now - conn.rc_taken_at >= PARKED_FOR
            or pool is not self._sync
            # Opened before the pool was drained (after a lost connection): the pool
            # closes it when given back, as it would have without parking.
            or conn._created_at <= pool._drained_at  # type: ignore[union-attr]
        ):
            self.release(conn)
            return
        conn.rc_parked_at = now
        self._parked.append(conn)
        if self._waiting:
            self._unpark(1)
        elif not self._sweeping:
            self._arm()

    def release(self, conn: StoreConnection) -> None:
        """Give ``conn`` back to the pool it came from (which checks it, or drops it)."""
        pool = conn.rc_pool
        conn.rc_pool = None
        if pool is None:  # pragma: no cover - given back twice
            return
        try:
            pool.putconn(conn)
        except Exception:  # pragma: no cover - a pool closed meanwhile
            conn.close()

    def _discard(self, conn: StoreConnection) -> None:
        """Close a parked connection ended while idle; its pool opens another."""
        pool = conn.rc_pool
        conn.rc_pool = None
        if isinstance(pool, SyncPool):
            pool.rc_discard(conn)
        else:  # pragma: no cover - parked connections all come from the sync pool
            conn.close()

    def waiting(self) -> AbstractContextManager[None]:
        """Around a wait in the sync pool (see ``SyncPool.getconn``)."""
        return _Waiting(self)

    def unpark(self) -> None:
        """Give every parked connection back to the pool."""
        self._unpark(len(self._parked))

    def unpark_one(self) -> None:
        """Give the longest parked connection back to the pool, if any."""
        self._unpark(1)

    def _unpark(self, count: int) -> None:
        for _ in range(count):
            try:
                conn = self._parked.pop(0)
            except IndexError:
                return
            self.release(conn)

    def _arm(self) -> None:
        with self._lock:
            if self._sweeping or self.closed:
                return
            self._sweeping = True
            timer = self._sweeper = threading.Timer(PARKED_FOR, self._sweep)
            timer.daemon = True
            timer.start()

    def _sweep(self) -> None:
        """Give back the connections parked for ``PARKED_FOR`` (they are idle)."""
        now = monotonic()
        for conn in list(self._parked):
            if now - conn.rc_parked_at >= PARKED_FOR:
                try:
                    self._parked.remove(conn)
                except ValueError:
                    continue  # taken meanwhile
                self.release(conn)
        with self._lock:
            self._sweeping = False
        # Cleared before looking: a connection parked meanwhile either is seen here or
        # saw the flag cleared and armed a timer itself.
        if self._parked and self._sync is not None:
            self._arm()

    async def running_loop(self) -> AsyncConnectionPool:
        """The pool of the running event loop, opened (without waiting) on first use."""
        loop = asyncio.get_running_loop()
        pool = self._async.get(loop)
        if pool is None:
            if self.closed:
                raise _closed()
            self._discard_ended_loops()
            pool = LoopPool(
                self.dsn.conninfo,
                budget=self.budget,
                describe_failure=self.describe_failure,
                min_size=0,
                max_size=self.max_connections,
                max_idle=self.idle_timeout,
                kwargs=self.connect_kwargs(),
                connection_class=self._async_class,
                configure=self._aconfigure,
                timeout=self.connect_timeout,
                reconnect_timeout=0,
                name=POOL_NAME,
                open=False,
            )
            self._async[loop] = pool
            await pool.open(wait=False)
            closer = self._close_with_loop(loop, pool)
            self._closers[loop] = closer
            await closer.__anext__()
        return pool

    def starved(self, pool: AsyncConnectionPool, exc: Exception) -> bool:
        """Whether ``exc`` is ``pool`` timing out while other loops' pools held every share
        of the budget and it held none: those loops reach the database, so it is up."""
        return (
            isinstance(exc, PoolTimeout)
            and not self.budget.available()
            and isinstance(pool, LoopPool)
            and pool.get_stats().get("pool_size", 0) == 0
        )

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, pool: LoopPool
    ) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._async.get(loop) is pool:
                del self._async[loop]
            self._closers.pop(loop, None)
            self.budget.forget(pool)
            idle = list(pool._pool)
            try:
                await pool.close()
            except asyncio.CancelledError:
                # asyncio.run cancels every task (the pool's workers too) before it
                # closes async generators, so close() cannot wait for them: close the
                # idle connections it would have closed after that wait.
                for conn in idle:
                    await conn.close()

    def drain(self) -> None:
        """Replace every pool's idle connections (each async pool within its own loop)."""
        self.unpark()
        pool = self._sync
        if pool is not None:
            pool.drain()
        for loop, apool in list(self._async.items()):
            try:
                loop.call_soon_threadsafe(_drain_async, apool)
            except RuntimeError:  # that event loop is closed
                pass

    def _discard_ended_loops(self) -> None:
        """Close the pools of event loops that were closed without closing them.

        ``asyncio.run`` closes a loop's pool as it ends the loop; a loop closed without
        shutting down its async generators leaves its pool open, holding connections and
        shares of the budget, on a loop where nothing can be awaited any more.
        """
        for loop, pool in list(self._async.items()):
            if loop.is_closed() and self._async.pop(loop, None) is pool:
                self._closers.pop(loop, None)
                pool.discard()

    def close(self) -> None:
        """Close every pool, for good: none opens again afterwards.

        The sync pool and its sweeping timer here; each event loop's pool within its
        loop: waited for when another thread runs that loop, scheduled when this thread
        does (it cannot wait for itself: ``aclose`` can), ended from here when the loop
        is not running (closed, or between two ``run_until_complete``).
        """
        self.unpark()
        with self._lock:
            self.closed = True
            pool, self._sync = self._sync, None
            sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            if sweeper is not threading.current_thread():
                sweeper.join()
        self.unpark()  # parked by a call that ended meanwhile
        self._close_loop_pools()
        if pool is not None:
            pool.close()

    def _close_loop_pools(self) -> None:
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, apool in list(self._async.items()):
            if self._async.pop(loop, None) is not apool:
                continue  # closed meanwhile, by its loop
            self._closers.pop(loop, None)
            self.budget.forget(apool)
            if loop.is_closed() or not loop.is_running():
                apool.discard()
            elif loop is current:
                _closing.add(task := loop.create_task(apool.close()))
                task.add_done_callback(_closing.discard)
            else:
                try:
                    asyncio.run_coroutine_threadsafe(apool.close(), loop).result(
                        self.connect_timeout + 5.0
                    )
                except Exception:  # the loop stopped meanwhile: its connections end with it
                    logger.debug("closing an event loop's pool failed", exc_info=True)

    def holds_any(self) -> bool:
        """Whether a sync pool or an event loop's pool is open (nothing to close if not)."""
        return self._sync is not None or bool(self._async)

    async def aclose(self) -> None:
        """Close the async pool of the running event loop (``close`` closes the others)."""
        loop = asyncio.get_running_loop()
        pool = self._async.pop(loop, None)
        self._closers.pop(loop, None)
        if pool is not None:
            self.budget.forget(pool)
            await pool.close()
        # A close() called in this loop scheduled its pool's closing: wait for it here.
        pending = [task for task in _closing if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending)

    def abandon(self) -> None:
        """In a forked child: drop the parent's pools without touching their connections.

        Closing them would tell the server to end the parent's sessions (the sockets
        are shared), and their worker threads do not exist here. Marked closed, they
        do nothing when collected; psycopg itself never ends a connection from a
        process other than the one that opened it.
        """
        pools: list[ConnectionPool | AsyncConnectionPool] = list(self._async.values())
        if self._sync is not None:
            pools.append(self._sync)
        for pool in pools:
            # The pool's own close() would join threads and end sessions: neither here.
            pool._closed = True
        self._sync = None
        self._parked = []
        self._async = {}
        self._closers = {}


def close_with(owner: object, pools: Pools) -> weakref.finalize[[Pools, int], Any]:
    """Close ``pools`` once ``owner`` is collected, if nothing closed them before.

    A store dropped without ``close()`` would otherwise keep its pool's worker threads
    and connections for the life of the process: the threads hold the pool, never the
    store. Each store has pools of its own, so closing them takes nothing from another
    store. Not at interpreter exit (as for a store never dropped), and nothing in a
    forked child, whose copy of the parent's pools is the parent's (see ``abandon``).
    """
    finalizer = weakref.finalize(owner, _close_unreferenced, pools, os.getpid())
    finalizer.atexit = False
    return finalizer


def _close_unreferenced(pools: Pools, pid: int) -> None:
    if os.getpid() != pid or not pools.holds_any():
        return
    # In a thread of its own: the collection that runs this may happen in any thread,
    # even one of these pools' workers or one holding their locks, and closing waits
    # for the pool's workers to end.
    try:
        threading.Thread(target=pools.close, name="resilient_circuit-close", daemon=True).start()
    except RuntimeError:  # pragma: no cover - the interpreter is shutting down
        pass
