"""PostgresStorage: breakers shared through PostgreSQL, each operation one ``rc_*`` call.

The state machine runs in the database (installed by ``resilient-circuit-cli
pg-setup``), so every process and host sharing the database shares each breaker.
One statement per operation, prepared, autocommit, on pooled connections.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from resilient_circuit import _fork, _settings
from resilient_circuit._dsn import Dsn
from resilient_circuit._machine import CircuitState, Config, as_timedelta
from resilient_circuit._settings import database_schema, default_namespace
from resilient_circuit.exceptions import SchemaNotReady, StorageAccessDenied, StorageNotUsable
from resilient_circuit.storage.base import (
    CircuitBreakerStorage,
    StorageClosed,
    StorageError,
    StorageErrorMode,
    check_admin_state,
    check_key_and_namespace,
    check_name,
)
from resilient_circuit.storage.postgres import notify, prepared, queries, readiness
from resilient_circuit.storage.postgres.batch import MAX_QUEUED, Flusher
from resilient_circuit.storage.postgres.borrowed import (
    Borrowed,
    ConnectionFactory,
    SyncSource,
    in_thread,
)
from resilient_circuit.storage.postgres.breaker import AdmissionMode, PgBreaker, RecordingMode
from resilient_circuit.storage.postgres.connection import Pools, close_with, describe
from resilient_circuit.storage.postgres.notify import Transition
from resilient_circuit.storage.postgres.outage import (
    DATABASE_MISSING,
    Outage,
    connect_refusal,
    connection_lost,
    one_line,
    unavailable,
)
from resilient_circuit.storage.postgres.prepared import (
    AsyncStoreConnection,
)

__all__ = ("PostgresStorage", "shared_storage")

logger = logging.getLogger("resilient_circuit.storage")

#: The longest ``idle`` that ``gc`` (and ``rc_gc``) accepts.
MAX_GC_IDLE = timedelta(days=3650)


# SQLSTATEs of a name that does not resolve: a function, a table, a schema, a type.
_UNDEFINED = frozenset({"42883", "42P01", "3F000", "42704"})
# How often one kind of unexpected database error is logged (it repeats on every call).
_ERROR_LOG_INTERVAL = 60.0
# What a call does during an outage, by ``on_storage_error``, for the outage WARNING.
_EFFECTS = {
    "open": "calls proceed without a breaker",
    "closed": "calls are rejected",
    "local": "calls use an in-memory breaker of this process",
}


class PostgresStorage(CircuitBreakerStorage):
    """Breakers shared through PostgreSQL by every process that uses the same database.

    ``dsn`` is any libpq connection string or URI. ``connect_timeout`` bounds how long
    a call may wait for the database (connection and pool), ``statement_timeout`` how
    long one function may run; after a failure the store skips the database for a
    short, growing backoff instead of making every call wait.

    Behind PgBouncer: ``prepared_statements`` (``RC_DB_PREPARED_STATEMENTS``) is on
    for a direct connection and off through a pooler unless forced; ``listen_dsn``
    (``RC_DB_LISTEN_DSN``) is where the LISTEN connection goes (default: ``dsn``,
    given up when that turns out to be a pooler).

    Instead of ``dsn``, an application that owns its connections passes ``pool`` (a
    psycopg_pool ``ConnectionPool``, ``AsyncConnectionPool``, or a pair of both) or
    ``connection_factory`` (returns a ``Connection``, or a context manager yielding
    one); the store borrows a connection per round trip and never closes them.

    Connections: at most ``max_connections`` pooled ones for sync callers and as many
    shared by every event loop, opened on demand and closed after ``idle_timeout``
    seconds unused, plus one LISTEN connection, opened the first
    time something needs it (a breaker with ``admission="cached"``, an OPEN verdict
    held locally, a ``subscribe`` callback). Constructing a store connects to
    nothing; after ``os.fork()`` the child starts afresh (see ``_after_fork``).
    """

    backend_name = "postgres"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        namespace: str | None = None,
        schema: str | None = None,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
        max_connections: int = 10,
        idle_timeout: float = 60.0,
        flush_interval: float = 0.05,
        max_queued: int = MAX_QUEUED,
        prepared_statements: bool | None = None,
        listen_dsn: str | None = None,
        pool: Any = None,
        connection_factory: ConnectionFactory | None = None,
    ) -> None:
        if sum(x is not None for x in (dsn, pool, connection_factory)) != 1:
            raise TypeError("pass exactly one of `dsn`, `pool` and `connection_factory`")
        if prepared_statements is not None and not isinstance(prepared_statements, bool):
            raise TypeError("`prepared_statements` must be True, False or None (automatic)")
        # Checked now, so that a malformed DSN fails here, once, with its password masked,
        # rather than in every reconnect attempt the pool would log.
        self._dsn = Dsn(dsn) if dsn is not None else None
        borrowed = Borrowed(pool, connection_factory) if dsn is None else None
        if listen_dsn is None:
            listen_dsn = _settings.listen_dsn()
        self._listen_dsn = Dsn(listen_dsn, "listen_dsn") if listen_dsn is not None else None
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("statement_timeout", statement_timeout),
            ("idle_timeout", idle_timeout),
            ("flush_interval", flush_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError("`max_connections` must be an int")
        if max_connections < 1:
            raise ValueError(f"`max_connections` must be >= 1, got {max_connections}")
        if isinstance(max_queued, bool) or not isinstance(max_queued, int):
            raise TypeError("`max_queued` must be an int")
        if max_queued < 1:
            raise ValueError(f"`max_queued` must be >= 1, got {max_queued}")
        #: The connection string with its password masked (for messages); None for
        #: connections the application lends.
        self.dsn = str(self._dsn) if self._dsn is not None else None
        #: The LISTEN connection string given, its password masked.
        self.listen_dsn = str(self._listen_dsn) if self._listen_dsn is not None else None
        self.prepared_statements = (
            prepared_statements
            if prepared_statements is not None
            else _settings.prepared_statements()
        )
        self.max_queued = max_queued
        self.namespace = check_name(
            namespace if namespace is not None else default_namespace(), "namespace"
        )
        self.schema = check_name(schema if schema is not None else database_schema(), "schema")
        self.connect_timeout = float(connect_timeout)
        self.statement_timeout = float(statement_timeout)
        self.idle_timeout = float(idle_timeout)
        self.flush_interval = float(flush_interval)
        self.max_connections = max_connections
        self.statements = queries.Statements.for_schema(self.schema)
        self._pools: Pools | Borrowed
        self._closes_pools: weakref.finalize[[Pools, int], Any] | None = None
        if borrowed is None:
            assert self._dsn is not None
            self._pools = self._new_pools()
            # Our own connections prepare every statement, unless configured not to
            # (see Pools); the application's follow their own prepare_threshold.
            self._prepare: bool | None = True
            conninfo: str | None = self._dsn.conninfo
        else:
            self._pools = borrowed
            self._prepare = None
            conninfo = borrowed.conninfo
        self._pool_dsn = Dsn(conninfo, "pool") if borrowed is not None and conninfo else None
        self._where = describe(conninfo or "")
        self._error_modes: frozenset[StorageErrorMode] = frozenset()
        self._breakers: dict[tuple[str, str], PgBreaker] = {}
        self._subscribers: tuple[Callable[[Transition], None], ...] = ()
        #: Whether ``close()`` was called: for good, in a forked child too.
        self.closed = False
        self._closed_told = False
        self._closed_dropped = 0  # outcomes of calls that ended after close()
        self._start_afresh()
        _fork.after_fork_in_child(self, PostgresStorage._after_fork)

    def _new_pools(self) -> Pools:
        assert self._dsn is not None
        pools = Pools(
            self._dsn,
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout,
            max_connections=self.max_connections,
            prepared_statements=self.prepared_statements,
            idle_timeout=self.idle_timeout,
        )
        # Dropped without close(), the store closes them when collected.
        self._closes_pools = close_with(self, pools)
        return pools

    def _after_fork(self) -> None:
        """In a child process: what the parent connected, started and learnt is its own.

        Inherited pools hold sockets the parent keeps using, threads that do not exist
        here, locks another thread may hold: they are dropped, never used nor closed
        (closing would end the parent's sessions), and the child connects on its first
        call like a new process. Pools the application lent are the application's.
        """
        if isinstance(self._pools, Pools):
            if self._closes_pools is not None:
                self._closes_pools.detach()
            self._pools.abandon()
            self._pools = self._new_pools()
            # Closed before the fork: closed in the child too (close() is final).
            self._pools.closed = self.closed
        self._start_afresh()

    def _start_afresh(self) -> None:
        """No outage known, no LISTEN, no flusher, no verdict: a new store's state."""
        self.outage = Outage(self._where, self._outage_effect)
        self._lock = threading.Lock()
        self._listener: notify.Listener | None = None
        self._warned_unlistened = False
        self._flusher = Flusher(self.flush_interval, self.flush, self._last_flush)
        self._errors_logged: dict[str, float] = {}
        # Subscriptions carry over a fork: the child listens again from its first call.
        self._listen_pending = bool(self._subscribers)
        for each in self._breakers.values():
            each.start_afresh()

    def __repr__(self) -> str:
        return f"PostgresStorage({self.dsn or self._where!r}, namespace={self.namespace!r})"

    # -- connections --------------------------------------------------------------

    def pool(self) -> ConnectionPool | SyncSource:
        """The pool of sync callers (the application's, when it lent one)."""
        pools = self._pools
        if isinstance(pools, Pools):
            pools.unpark()  # every connection the store holds is the pool's to lend
        return pools.sync()

    def _get_connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """0.4.5's way to reach the database: ``with storage._get_connection() as conn:``.

        A pooled connection (in autocommit, for the store's own pool), given back to the
        pool after the block.
        """
        return self.pool().connection(timeout=self.connect_timeout)

    async def apool(self) -> AsyncConnectionPool:
        """The pool of the running event loop."""
        return await self._pools.running_loop()

    def close(self) -> None:
        """Close the store for good: flush queued outcomes, stop listening, close the pools.

        Final and idempotent. From the moment it is called the store opens no
        connection and starts no thread again: when it returns, its LISTEN and flusher
        threads have ended and its pools are closed, each event loop's pool within its
        loop (from a coroutine, ``await asyncio.to_thread(store.close)``: see
        ``aclose``). The last flush is tried even while an outage backoff is running;
        what it could not write is logged (a WARNING naming the breakers and how many
        outcomes) and counted in ``dropped_outcomes``. In a forked child it closes the
        child's own connections only; a store closed before a fork is closed in the
        child too.

        A call made after it (or racing it) is not an outage: it is handled per its
        policy's ``on_storage_error``, as during one, and the store logs once, as a
        WARNING, that it was closed. Not raised as an error (``StorageNotUsable`` is
        for a store an operator must fix): the requests still finishing while an
        application shuts down would fail on every deploy, the breaker becoming the
        outage it guards against. A call already running keeps its own result or
        exception; its outcome, which can no longer be recorded, is counted in
        ``dropped_outcomes`` and told by that same line.
        """
        with self._lock:
            first, self.closed = not self.closed, True
        if first:
            for each in self.breakers():
                each.close()  # no cached verdict, nothing queued: each call asks the store
        self._flusher.stop()
        # A call that took the queued path as the breakers closed may have queued after
        # the last flush: nothing will send that any more.
        late = sum(each.discard_queued() for each in self.breakers())
        if late:
            self._closed_drop(late)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._pools.close()

    async def aclose(self) -> None:
        """Close the async pool of the running event loop; the store stays usable.

        Not a final close: the loop's pool opens again if a coroutine of this loop calls
        once more (a worker that ends each ``asyncio.run`` with it keeps its store). To
        close the store for good from a coroutine, ``await asyncio.to_thread(store.close)``
        (which also closes this loop's pool, without blocking the loop); ``close()``
        called in the loop itself cannot wait for that pool, ``await aclose()`` after it
        does.
        """
        await self._pools.aclose()

    def _refused(self, breaker: PgBreaker | None, statement: Any) -> StorageClosed:
        """What a round trip after ``close()`` raises, said once per store (not an outage).

        An outcome it would have recorded is counted in ``dropped_outcomes``.
        """
        self._closed_drop(int(breaker is not None and statement is self.statements.record))
        return StorageClosed(f"breaker storage {self._where} was closed by close()")

    def _closed_drop(self, dropped: int) -> None:
        """Count ``dropped`` outcomes lost to ``close()``; the first time, say it was closed."""
        with self._lock:
            self._closed_dropped += dropped
            told, self._closed_told = self._closed_told, True
        if not told:
            logger.warning(
                "breaker storage %s was closed by close() (not an outage): calls made since"
                " are handled per on_storage_error: %s; outcomes of calls ending after it"
                " are not recorded (counted in dropped_outcomes)",
                self._where,
                self._outage_effect(),
            )

    # -- one round trip -----------------------------------------------------------

    def _outage_effect(self) -> str:
        """What calls do during an outage, as the breakers of this store are configured."""
        modes = sorted(self._error_modes) or ["open"]
        if len(modes) == 1:
            return f"{_EFFECTS[modes[0]]} (on_storage_error={modes[0]!r})"
        return "; ".join(f"with on_storage_error={m!r} {_EFFECTS[m]}" for m in modes)

    def _failed(
        self,
        exc: Exception,
        started: float | None = None,
        pool: AsyncConnectionPool | None = None,
    ) -> Exception:
        """The exception a failed round trip raises, by what went wrong (``pool``: the
        event loop's pool it waited in, if any)."""
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in ("22023", "P0002"):
            # A bad argument, or a breaker that does not exist (rc_force, rc_reset).
            return ValueError(str(exc).strip())
        if sqlstate == "42501":
            return StorageAccessDenied(self._access_denied(exc))
        refused = self._refused_connection(exc, pool)
        if refused is not None:
            self.outage.failed(exc, started, str(refused), refused)
            return refused
        if not unavailable(exc):
            if not isinstance(exc, psycopg.Error):
                return exc  # not the database's answer: a misuse or a bug, raised as is
            # Not an outage: this store stays in use for every other breaker. The
            # caller's breaker handles this call per its on_storage_error.
            self._log_unexpected(exc)
            return StorageError(f"breaker storage error: {one_line(exc)}")
        if connection_lost(exc):
            # Idle connections opened before this one died are most likely dead too:
            # replace them now, or each would fail once after the database is back.
            self._pools.drain()
        reason = self._unavailable_reason(exc, pool)
        self.outage.failed(exc, started, reason)
        return StorageError(f"breaker storage unavailable: {reason}")

    def _refused_connection(
        self, exc: Exception, pool: AsyncConnectionPool | None
    ) -> StorageNotUsable | None:
        """What to raise when the server refused the store's connections as configured (no
        such database, login refused): a deployment mistake, not an outage. None otherwise,
        also for words not recognised (a server speaking another language): an outage."""
        pools = self._pools
        if not isinstance(pools, Pools):
            return None  # the application's own pool: its connections are its business
        refusal, reason = connect_refusal(exc), ""
        if refusal is not None:
            reason = pools.describe_failure(exc)
        elif isinstance(exc, PoolTimeout):
            # Waiting callers are given the refusal itself (see SyncPool); one that timed
            # out as it came is told what the last attempt was told.
            refusal = pools.connect_refusal(pool)
            reason = pools.connect_failure(pool) or ""
        if refusal is None:
            return None
        if refusal == DATABASE_MISSING:
            return StorageNotUsable(
                f"breaker storage {self._where} is not usable: {reason}: create that"
                " database (then run `resilient-circuit-cli pg-setup` in it), or correct"
                " RC_DB_NAME or the DSN"
            )
        return StorageAccessDenied(
            f"breaker storage {self._where} is not usable: {reason}: the server refused"
            f" the login of role {self._role(exc)!r}; check the role's name (RC_DB_USER or"
            " the DSN), that it exists and may log in, its password and pg_hba.conf"
        )

    def _unavailable_reason(self, exc: Exception, pool: AsyncConnectionPool | None) -> str:
        """``exc`` in one line; for a pool's timeout, why its last connection attempt failed.

        A wrong database name, an unknown role or a refused port makes every attempt fail
        at once, and the caller then waits the pool's whole timeout: the timeout alone
        would hide the only thing worth knowing.
        """
        pools = self._pools
        if isinstance(exc, PoolTimeout) and isinstance(pools, Pools):
            cause = pools.connect_failure(pool)
            if cause is not None:
                return f"{cause} (no connection within {self.connect_timeout:.2f} s)"
        return one_line(exc)

    def _starved(self) -> StorageError:
        """This event loop waited ``connect_timeout`` while other loops held every
        connection of the budget: the database answers them, so it is not an outage (which
        would send every breaker of the store past the database for a while); this call
        alone is handled per its breaker's on_storage_error."""
        now = time.monotonic()
        if now - self._errors_logged.get("starved", float("-inf")) >= _ERROR_LOG_INTERVAL:
            self._errors_logged["starved"] = now
            logger.warning(
                "breaker storage %s: an event loop waited %.2f s while other event loops held"
                " all %d connections of their budget (max_connections); its calls meanwhile"
                " are handled per on_storage_error: raise max_connections, or run fewer event"
                " loops at once",
                self._where,
                self.connect_timeout,
                self.max_connections,
            )
        return StorageError(
            f"breaker storage busy: other event loops held all {self.max_connections}"
            " connections of the budget (max_connections)"
        )

    def _access_denied(self, exc: Exception) -> str:
        role = self._role(exc)
        return (
            f"{one_line(exc)} ({self._where}, schema {self.schema!r}): grant it with "
            f"`resilient-circuit-cli pg-setup --schema {self.schema} --app-role {role}"
            f" --namespace {self.namespace}` run as the owner of the breaker functions"
        )

    def _role(self, exc: Exception | None = None) -> str:
        """The login role, for the command that grants it access."""
        pgconn = getattr(exc, "pgconn", None)
        user = getattr(pgconn, "user", None) if pgconn is not None else None
        if isinstance(user, bytes) and user:
            return user.decode("utf-8", "replace")
        conninfo = self._dsn.conninfo if self._dsn is not None else None
        if not conninfo:
            return "ROLE"
        return str(psycopg.conninfo.conninfo_to_dict(conninfo).get("user") or "ROLE")

    def _log_unexpected(self, exc: Exception) -> None:
        kind = f"{type(exc).__name__}:{getattr(exc, 'sqlstate', None)}"
        now = time.monotonic()
        if now - self._errors_logged.get(kind, float("-inf")) < _ERROR_LOG_INTERVAL:
            return
        self._errors_logged[kind] = now
        logger.error(
            "breaker storage %s failed a call (not an outage; each breaker handles its "
            "call per on_storage_error): %s",
            self._where,
            one_line(exc),
        )

    def _not_ready(self, found: readiness.Functions, statement: Any) -> StorageNotUsable:
        where = self._where
        setup = f"resilient-circuit-cli pg-setup --schema {self.schema}"
        if not found.schema_usable and not found.missing:
            return StorageAccessDenied(
                f"the role may not use schema {self.schema!r} of {where}: grant it with "
                f"`{setup} --app-role {self._role()}`"
            )
        return SchemaNotReady(
            f"{found.describe_missing(self.schema)} of {where} "
            f"({self.statements.function(statement)} is missing): run `{setup}` "
            "(or set RC_DB_AUTO_CREATE=1 to install on first use, for development)"
        )

    def _install(self) -> None:
        """``RC_DB_AUTO_CREATE``: install the schema, under the installer's advisory lock."""
        from resilient_circuit import _installer

        if self._dsn is None:
            with self.pool().connection(timeout=self.connect_timeout) as lent:
                ran = _installer.install(lent, schema=self.schema)
        else:
            # A connection of its own: the pool's carry the statement timeout.
            with psycopg.connect(
                self._dsn.conninfo,
                autocommit=True,
                connect_timeout=max(2, round(self.connect_timeout)),
                **self._dsn.connect_kwargs(),
            ) as conn:
                ran = _installer.install(conn, schema=self.schema)
        if not ran:
            return  # another process or thread installed it meanwhile
        logger.warning(
            "installed the breaker functions in schema %r of %s (RC_DB_AUTO_CREATE)",
            self.schema,
            self._where,
        )

    def _begin(
        self, breaker: PgBreaker | None, statement: Any, force: bool = False
    ) -> tuple[bool, float]:
        """Before a round trip (sync or async): skip a database known down, note the time.

        ``force`` tries even so (the last flush before closing).
        """
        if self.closed and not force:
            raise self._refused(breaker, statement)
        outage = self.outage
        # down_since: skip's own first test, made here without the call.
        if (
            not force
            and outage.down_since is not None
            and outage.skip(self.connect_timeout + self.statement_timeout)
        ):
            refused = outage.refused
            if refused is not None:
                # A new exception per call: one raised again would pile up tracebacks.
                raise type(refused)(*refused.args)
            raise StorageError("breaker storage unavailable (backing off)")
        if self._listen_pending:
            self.listen()
        # Admission (while CLOSED) and status only read, which a read-only or locked
        # database still answers: for a store that records, only a write ends an outage.
        return not self.statements.reads_only(statement), time.monotonic()

    def _finish(self, row: Any, started: float, wrote: bool, missing_ok: bool) -> Any:
        """After a round trip that got its answer: maybe end an outage, check the row."""
        if self.outage.watching:  # down, or never answered before
            self.outage.succeeded(started, wrote or not self._breakers)
        if row is None and not missing_ok:
            raise StorageError("breaker function returned no row")
        return row

    def _send(
        self, conn: psycopg.Connection[Any], breaker: PgBreaker | None, statement: Any, params: Any
    ) -> Any:
        """The statement, after storing the breaker's configuration if it never was.

        The first time, the row's configuration is read just before it is replaced, so
        that another process's differing declaration is worth a WARNING.
        """
        prepare = self._prepare
        pending = breaker.pending_configuration() if breaker is not None else None
        with self._pools.scope(conn):
            if pending is not None:
                stmts = self.statements
                storing = conn.execute(stmts.stored_config, pending, prepare=prepare)
                configuring = conn.execute(stmts.configure, pending, prepare=prepare)
            cur = conn.execute(statement, params, prepare=prepare)
        if breaker is not None and pending is not None:
            stored = storing.fetchone()
            configured = configuring.fetchone()
            if configured is not None:
                breaker.configured(configured, stored)
        return cur.fetchone()

    async def _asend(
        self,
        conn: psycopg.AsyncConnection[Any],
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
    ) -> Any:
        """The coroutine twin of ``_send``."""
        prepare = self._prepare
        pending = breaker.pending_configuration() if breaker is not None else None
        async with self._pools.ascope(conn):
            if pending is not None:
                stmts = self.statements
                storing = await conn.execute(stmts.stored_config, pending, prepare=prepare)
                configuring = await conn.execute(stmts.configure, pending, prepare=prepare)
            cur = await conn.execute(statement, params, prepare=prepare)
        if breaker is not None and pending is not None:
            stored = await storing.fetchone()
            configured = await configuring.fetchone()
            if configured is not None:
                breaker.configured(configured, stored)
        return await cur.fetchone()

    def fetch(
        self,
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
        *,
        missing_ok: bool = False,
        force: bool = False,
    ) -> Any:
        """Run one statement (configuring the breaker first if it never was)."""
        wrote, started = self._begin(breaker, statement, force)
        configured = breaker is None or breaker.is_configured
        wrote = wrote or not configured
        used: psycopg.Connection[Any] | None = None
        pools = self._pools
        try:
            if isinstance(pools, Pools):
                # Taken and given back by hand: the pool's context manager would also
                # commit, which an autocommit connection never needs; after an error
                # the pool checks the connection (see Pools.take).
                conn = used = pools.take()
                try:
                    fast = self.statements.prepared(statement, conn, configured)
                    try:
                        if fast is not None:
                            row = prepared.run(conn, fast, params)
                        else:
                            row = self._send(conn, breaker, statement, params)
                    except psycopg.Error as exc:
                        row = self._unresolved(exc, conn, breaker, statement, params)
                except BaseException:
                    pools.release(conn)
                    raise
                pools.give(conn)
            else:
                with pools.sync().connection(timeout=self.connect_timeout) as lent:
                    used = lent
                    try:
                        row = self._send(lent, breaker, statement, params)
                    except psycopg.Error as exc:
                        row = self._unresolved(exc, lent, breaker, statement, params)
        except StorageNotUsable:
            raise
        except Exception as exc:
            if used is not None and used.broken and isinstance(pools, Pools):
                # The pool drops a broken connection without closing it: its socket is
                # freed now rather than at garbage collection.
                used.close()
            if self.closed and not force:
                # Raced close() (its pool closed under it): the close, not an outage.
                raise self._refused(breaker, statement) from exc
            failure = self._failed(exc, started)
            if failure is exc:
                raise
            raise failure from exc
        if row is None or self.outage.watching:
            return self._finish(row, started, wrote, missing_ok)
        return row

    def _unresolved(
        self,
        exc: psycopg.Error,
        conn: psycopg.Connection[Any],
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
    ) -> Any:
        """After ``exc``: the statement's row on ``conn`` if our functions are installed now.

        A function that does not resolve is the schema not installed (or not usable):
        said so, or installed now with ``RC_DB_AUTO_CREATE``. Any other error is raised.
        """
        if exc.sqlstate not in _UNDEFINED:
            raise exc
        found = readiness.inspect_functions(conn, self.schema)
        if found.installed and found.schema_usable:
            raise exc  # our functions are there: something else does not resolve
        problem = self._not_ready(found, statement)
        if not (isinstance(problem, SchemaNotReady) and _settings.auto_create()):
            raise problem from exc
        self._install()
        return self._send(conn, breaker, statement, params)

    async def afetch(
        self,
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
        *,
        missing_ok: bool = False,
        force: bool = False,
    ) -> Any:
        """The coroutine twin of ``fetch``: same statements, awaited on an async pool."""
        pools = self._pools
        if isinstance(pools, Borrowed) and not pools.serves_async:
            # The application lent sync connections only: a worker thread waits for them.
            return await in_thread(
                lambda: self.fetch(breaker, statement, params, missing_ok=missing_ok, force=force)
            )
        wrote, started = self._begin(breaker, statement, force)
        wrote = wrote or (breaker is not None and not breaker.is_configured)
        used: psycopg.AsyncConnection[Any] | None = None
        pool: AsyncConnectionPool | None = None
        try:
            pool = await self.apool()
            async with pool.connection(timeout=self.connect_timeout) as conn:
                used = conn
                try:
                    fast = self.statements.prepared(
                        statement, conn, breaker is None or breaker.is_configured
                    )
                    if fast is not None:
                        row = await prepared.arun(cast(AsyncStoreConnection, conn), fast, params)
                    else:
                        row = await self._asend(conn, breaker, statement, params)
                except psycopg.Error as exc:
                    if exc.sqlstate not in _UNDEFINED:
                        raise
                    found = await readiness.ainspect_functions(conn, self.schema)
                    if found.installed and found.schema_usable:
                        raise
                    problem = self._not_ready(found, statement)
                    if not (isinstance(problem, SchemaNotReady) and _settings.auto_create()):
                        raise problem from exc
                    await asyncio.to_thread(self._install)
                    row = await self._asend(conn, breaker, statement, params)
        except StorageNotUsable:
            raise
        except Exception as exc:
            if used is not None and used.broken and isinstance(self._pools, Pools):
                # As in fetch; this also gives its share of the event loops' budget back.
                await used.close()
            if self.closed and not force:
                raise self._refused(breaker, statement) from exc
            if isinstance(pools, Pools) and pool is not None and pools.starved(pool, exc):
                raise self._starved() from exc
            failure = self._failed(exc, started, pool)
            if failure is exc:
                raise
            raise failure from exc
        return self._finish(row, started, wrote, missing_ok)

    # -- breakers -------------------------------------------------------------------

    def breaker(
        self,
        resource_key: str,
        namespace: str,
        config: Config,
        *,
        admission: AdmissionMode = "strict",
        recording: RecordingMode = "immediate",
        on_storage_error: StorageErrorMode = "open",
    ) -> PgBreaker:
        """Bind a breaker; its ``config`` is stored in its row on its first round trip.

        No I/O: a policy built at import time costs nothing until it is called.
        """
        with self._lock:
            found = self._breakers.get((namespace, resource_key))
            if found is None:
                found = PgBreaker(self, resource_key, namespace, config)
                self._breakers[(namespace, resource_key)] = found
            elif found.config != config:
                found.reconfigure(config)
            self._error_modes = self._error_modes | {on_storage_error}
            listener = self._listener
        if listener is not None:
            listener.flag(namespace)  # its channel joins those listened on
        found.set_modes(admission, recording)
        return found

    def breakers(self) -> list[PgBreaker]:
        with self._lock:
            return list(self._breakers.values())

    # -- transitions and batches ------------------------------------------------------

    def listen(self) -> None:
        """Start the LISTEN connection that keeps cached verdicts honest (once needed)."""
        self._listen_pending = False
        if self.closed:
            return  # a thread started now would outlive close()
        listener = self._listener
        if listener is not None:
            # Called on every OPEN reply while not listening: cheap once warned.
            if listener.refused and not self._warned_unlistened and self._relies_on_notifications():
                self._warn_unlistened()
            return
        target = self._listen_target()
        if target is None:
            return  # a connection factory alone: no connection string to listen on
        with self._lock:
            if self._listener is None and not self.closed:
                kwargs = {k: v for k, v in self._pools.connect_kwargs().items() if k != "password"}
                self._listener = notify.Listener(
                    target.conninfo,
                    {**kwargs, **target.connect_kwargs()},
                    self._announced,
                    schema=self.schema,
                    namespaces=self._namespaces(),
                    # A listen_dsn is the operator's word that it reaches PostgreSQL.
                    check_route=self._listen_dsn is None,
                    on_refused=self._listen_refused,
                    on_listening=self._reread_held,
                    on_lost=self._listen_lost,
                )
                self._listener.start()

    def _namespaces(self) -> set[str]:
        """The namespaces whose channels LISTEN covers: the store's and its breakers'.

        Called with ``_lock`` held; a breaker bound later adds its own (see ``breaker``).
        """
        return {self.namespace} | {namespace for namespace, _ in self._breakers}

    def _listen_target(self) -> Dsn | None:
        """Where LISTEN goes: ``listen_dsn``, else the store's DSN, else the lent pool's."""
        if self._listen_dsn is not None:
            return self._listen_dsn
        if self._dsn is not None:
            return self._dsn
        return self._pool_dsn

    def _relies_on_notifications(self) -> bool:
        """Whether a cached admission or a subscriber needs the LISTEN connection."""
        return bool(self._subscribers) or any(each.cached for each in self.breakers())

    def _listen_refused(self) -> None:
        # Without notifications a store only re-checks OPEN verdicts more often: worth
        # a WARNING only where cached admission or a subscriber relied on them.
        if self._relies_on_notifications():
            self._warn_unlistened()
        else:
            logger.info("breaker storage %s: %s", self._where, _UNLISTENED)

    def _warn_unlistened(self) -> None:
        with self._lock:
            if self._warned_unlistened:
                return
            self._warned_unlistened = True
        logger.warning("breaker storage %s: %s", self._where, _UNLISTENED)

    def listening(self, namespace: str | None = None) -> bool:
        """Whether the LISTEN connection is up (and listens on ``namespace``'s channel)."""
        listener = self._listener
        if listener is None:
            return False
        if namespace is None:
            return listener.healthy
        return listener.flag(namespace).is_set()

    def listening_flag(self, namespace: str) -> threading.Event | None:
        """The event set while ``namespace``'s channel is listened on (None: no listener).

        A breaker's cached verdict holds only while it is set; reading it per call
        costs one method call, where ``listening()`` costs three.
        """
        listener = self._listener
        return None if listener is None else listener.flag(namespace)

    def wait_listening(self, timeout: float = 5.0) -> bool:
        """Block until the LISTEN connection is up (for start-up and tests).

        Starts it now if a breaker with cached admission needs it (otherwise its
        first call would).
        """
        if self._listener is None and any(b.cached for b in self.breakers()):
            self.listen()
        listener = self._listener
        return listener is not None and listener.wait_until_listening(timeout)

    def _announced(self, event: Transition | None) -> None:
        if event is None:
            # (Re)connected: what happened while not listening is unknown. The OPEN
            # verdicts held meanwhile are capped at a second, and read again next.
            for each in self.breakers():
                each.invalidate(keep_open=True)
            return
        found = self._breakers.get((event.namespace, event.resource_key))
        if found is not None:
            found.announced(event)
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                # The listener thread serves every breaker: one faulty callback must not stop it.
                logger.exception("transition subscriber %r failed", callback)

    def _reread_held(self, conn: psycopg.Connection[Any]) -> None:
        """LISTEN is up on ``conn``: read the OPEN verdicts held unheard again, at once.

        From now on every change is announced; a change between a verdict and this
        read (a peer forcing CLOSED) shows in the row. Then a still-OPEN verdict is held
        for its whole cooldown: no round trip until it ends, in any mode.
        """
        held = [(b, mark) for b in self.breakers() if (mark := b.held_unheard()) is not None]
        if not held:
            return
        params = {
            "keys": [b.resource_key for b, _ in held],
            "namespaces": [b.namespace for b, _ in held],
        }
        try:
            rows = conn.execute(self.statements.reread, params).fetchall()
        except psycopg.Error as exc:
            if conn.broken:
                raise  # the listener reconnects (and reads them again then)
            # Left capped at a second: the next call after it asks, as without LISTEN.
            logger.warning(
                "breaker storage %s: could not read held OPEN verdicts again: %s",
                self._where,
                one_line(exc),
            )
            return
        now = time.monotonic_ns()
        found = {row[0]: row[1:] for row in rows}
        for number, (each, (epoch, generation)) in enumerate(held, 1):
            remaining = queries.open_remaining(found.get(number), generation)
            each.reheard(remaining, epoch, generation, now)

    def _listen_lost(self) -> None:
        # Nothing can revoke a cached verdict any more: every call asks again, and OPEN
        # verdicts are held for a second at most, until a LISTEN connection is back.
        for each in self.breakers():
            each.invalidate()

    def subscribe(self, callback: Callable[[Transition], None]) -> Callable[[], None]:
        """Call ``callback(transition)`` for each transition heard; returns the unsubscribe.

        It runs in the store's LISTEN thread, once this process's breakers have dropped
        what they cached for that key, so it must be quick; it hears the store's
        namespace and every namespace its breakers use. Subscribing starts the LISTEN
        connection. A transition is an announcement that a role knowing the channel
        could forge: treat it as a reason to look, not as the breaker's state.
        """
        if not callable(callback):
            raise TypeError("`callback` must be callable")
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(c for c in self._subscribers if c is not callback)

        self.listen()
        return unsubscribe

    def start_flusher(self) -> None:
        self._flusher.start()

    @property
    def dropped_outcomes(self) -> int:
        """Outcomes not recorded (each kind logged): batched ones shed because too many
        were waiting, those ``close()`` could not write, those of calls that ended after
        it."""
        return sum(b.dropped for b in self.breakers()) + self._closed_dropped

    def _last_flush(self) -> None:
        # One attempt, made even during an outage backoff: after the first breaker that
        # cannot be written, the others are not tried (each would wait for a timeout).
        failure: StorageError | StorageNotUsable | None = None
        breakers = self.breakers()
        for found in breakers:
            if failure is None and found.queued:
                failure = found.flush(final=True)
            else:
                found.report_shed()
        left = [(b, b.queued) for b in breakers if b.queued]
        if left:
            logger.warning(
                "could not write %d batched outcomes before closing (%s): %s",
                sum(n for _, n in left),
                ", ".join(f"{b.namespace}/{b.resource_key}: {n}" for b, n in left),
                failure or "the database did not answer",
            )
            if self.closed:
                # Told just now: counted as dropped, and out of the queues, so that what
                # close() finds queued afterwards is only what came later.
                lost = sum(b.discard_queued() for b, _ in left)
                with self._lock:
                    self._closed_dropped += lost

    def flush(self) -> None:
        """Send every breaker's queued outcomes now."""
        for found in self.breakers():
            found.flush()

    def watch(self, *, timeout: float | None = None) -> Iterator[Transition]:
        """Transitions of every namespace the login role may use, as they commit."""
        target = self._watch_target()
        return notify.watch(
            target.conninfo, timeout=timeout, password=target.password, schema=self.schema
        )

    def awatch(self, *, timeout: float | None = None) -> AsyncIterator[Transition]:
        """The async twin of ``watch``."""
        target = self._watch_target()
        return notify.awatch(
            target.conninfo, timeout=timeout, password=target.password, schema=self.schema
        )

    def _watch_target(self) -> Dsn:
        target = self._listen_target()
        if target is None:
            raise TypeError("watching needs `listen_dsn` when the store has a connection factory")
        return target

    # -- bounded rows -------------------------------------------------------------------

    def forget(self, resource_key: str, namespace: str | None = None) -> bool:
        """Delete one breaker's row (True if there was one); its next use starts afresh."""
        key, ns = check_key_and_namespace(resource_key, namespace, self.namespace)
        row = self.fetch(None, self.statements.forget, {"key": key, "namespace": ns})
        found = self._breakers.get((ns, key))
        if found is not None:
            # Its configuration went with the row: store it again on next use.
            found.reconfigure(found.config)
            found.invalidate()
        return bool(row[0])

    def delete_state(self, resource_key: str, namespace: str | None = None) -> bool:
        """0.8.6's name for ``forget``: delete one breaker's row, True if there was one."""
        return self.forget(resource_key, namespace)

    def check(self) -> None:
        """One round trip now: StorageError when the database does not answer."""
        self.fetch(
            None, self.statements.status, {"key": "-", "namespace": self.namespace}, missing_ok=True
        )

    def gc(self, idle: timedelta) -> int:
        """Delete the CLOSED breakers (of this role's namespaces) unchanged for ``idle``."""
        idle = as_timedelta(idle, "idle")
        if not timedelta(0) <= idle <= MAX_GC_IDLE:
            raise ValueError(f"`idle` must be between 0 and {MAX_GC_IDLE.days} days, got {idle}")
        row = self.fetch(None, self.statements.gc, {"idle": idle})
        return int(row[0])

    # -- 0.4.5's admin API ----------------------------------------------------------

    def get_state(self, resource_key: str, namespace: str | None = None) -> dict[str, Any] | None:
        key, ns = check_key_and_namespace(resource_key, namespace, self.namespace)
        row = self.fetch(
            None,
            self.statements.status,
            {"key": key, "namespace": ns},
            missing_ok=True,
        )
        if row is None:
            return None
        open_until: datetime | None = row[4]
        return {
            "state": row[0],
            "failure_count": row[3],
            "open_until": open_until.timestamp() if open_until is not None else 0,
            "execution_log": list(queries.window(row[2])),
            "generation": row[1],
        }

    def set_state(
        self,
        resource_key: str,
        state: str,
        failure_count: int,
        open_until: float,
        execution_log: list[bool] | None = None,
        namespace: str | None = None,
    ) -> None:
        resource_key, ns = check_key_and_namespace(resource_key, namespace, self.namespace)
        admin = check_admin_state(resource_key, state, failure_count, open_until, execution_log)
        until = (
            datetime.fromtimestamp(admin.open_until, timezone.utc)
            if admin.state is CircuitState.OPEN and admin.open_until
            else None
        )
        self.fetch(
            None,
            self.statements.set_state,
            {
                "key": resource_key,
                "namespace": ns,
                "state": admin.state.value,
                "failure_count": admin.failure_count,
                "open_until": until,
                "execution_log": list(admin.window),
                "held": admin.state is CircuitState.DISABLED,
            },
            missing_ok=True,
        )
        found = self._breakers.get((ns, resource_key))
        if found is not None:
            found.invalidate()


_UNLISTENED = (
    "its connections go through a connection pooler (PgBouncer?), which does not deliver"
    " LISTEN notifications: cached admission falls back to asking the database on every"
    " call (strict), and OPEN verdicts are re-checked every second. Set listen_dsn"
    " (RC_DB_LISTEN_DSN) to a direct connection to PostgreSQL to restore them."
)


_shared: dict[tuple[str, str | None], PostgresStorage] = {}
_shared_lock = threading.Lock()


def shared_storage(dsn: str, namespace: str | None) -> PostgresStorage:
    """One PostgresStorage (one pool) per DSN and namespace in this process."""
    with _shared_lock:
        found = _shared.get((dsn, namespace))
        if found is None or found.closed:
            # A closed store never connects again: policies made after it get a new one.
            found = _shared[(dsn, namespace)] = PostgresStorage(dsn, namespace=namespace)
        return found
