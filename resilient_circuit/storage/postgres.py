"""Breakers in PostgreSQL: each operation is one call of an ``rc_*`` function.

The state machine runs in the database (installed by ``resilient-circuit-cli
pg-setup``), so every process and host sharing the database shares each breaker.
One statement per operation, prepared, autocommit, on pooled connections; sync
callers use a ``ConnectionPool``, coroutines an ``AsyncConnectionPool`` (never a
thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any, Literal

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "PostgreSQL storage needs psycopg 3 and psycopg-pool: "
        "pip install 'resilient_circuit[postgres]'"
    ) from exc

from resilient_circuit._machine import Admission, CircuitState, Config
from resilient_circuit._settings import database_schema, default_namespace
from resilient_circuit.storage import _pg_batch, _pg_notify
from resilient_circuit.storage import _pg_engine as eng
from resilient_circuit.storage.base import (
    Breaker,
    CircuitBreakerStorage,
    Snapshot,
    StorageError,
    check_admin_state,
    check_name,
)

__all__ = ("AdmissionMode", "PostgresStorage", "RecordingMode", "shared_storage")

AdmissionMode = Literal["strict", "cached"]
RecordingMode = Literal["immediate", "batched"]

# How long an OPEN verdict is trusted while no LISTEN connection can revoke it.
UNHEARD_OPEN_HOLD_NS = 1_000_000_000

# Errors that mean "the store could not answer", as opposed to a bug or bad input.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # Read-only replicas, admin shutdown, statement/lock timeouts, missing schema.
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in ("25", "57", "08", "53", "55", "42", "40")


def _connection_lost(exc: BaseException) -> bool:
    """A dead connection: the others pooled before it (a restart, a failover) may be too."""
    if isinstance(exc, PoolTimeout) or not isinstance(exc, psycopg.OperationalError):
        return isinstance(exc, psycopg.InterfaceError)
    sqlstate = exc.sqlstate or ""
    return not sqlstate or sqlstate.startswith(("08", "57P"))


_draining: set[asyncio.Future[None]] = set()


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


class PgBreaker(Breaker):
    """One breaker row, as seen from this process.

    While OPEN it remembers the remaining cooldown the server reported and rejects
    locally, with no round trip, until that time has passed. With ``cached``
    admission a CLOSED breaker admits from the last reply while the store's LISTEN
    connection is up (a transition anywhere invalidates it at once); with
    ``batched`` recording the outcomes of calls admitted while CLOSED are queued and
    flushed together.
    """

    __slots__ = (
        "_admit_closed",
        "_cached",
        "_configured",
        "_flushing",
        "_last",
        "_open_deadline",
        "_open_until",
        "_queue",
        "_store",
        "_trusted",
        "config",
        "key",
        "namespace",
    )

    def __init__(
        self,
        store: PostgresStorage,
        key: str,
        namespace: str,
        config: Config,
    ) -> None:
        self._store = store
        self.key = key
        self.namespace = namespace
        self.config = config
        self._configured = False
        self._last: eng.Reply | None = None
        self._open_deadline = 0  # monotonic ns; 0 = no cached OPEN verdict
        self._open_until = 0  # monotonic ns: the end of the cooldown the server reported
        self._admit_closed = Admission(True, CircuitState.CLOSED, -1, None)
        self._trusted = False  # may the last reply admit without asking the server?
        self._cached = False
        self._queue: _pg_batch.OutcomeQueue | None = None
        # Held while a batch is on its way, so flush() returns only once it has landed.
        self._flushing = threading.Lock()

    def set_modes(self, admission: AdmissionMode, recording: RecordingMode) -> None:
        if admission not in ("strict", "cached"):
            raise ValueError(f"`admission` must be 'strict' or 'cached', got {admission!r}")
        if recording not in ("immediate", "batched"):
            raise ValueError(f"`recording` must be 'immediate' or 'batched', got {recording!r}")
        self._cached = admission == "cached"
        if recording == "batched" and self._queue is None:
            self._queue = _pg_batch.OutcomeQueue()
        if self._cached:
            self._store.listen()
        if self._queue is not None:
            self._store.start_flusher()

    @property
    def last_known(self) -> eng.Reply | None:
        return self._last

    @property
    def queued(self) -> int:
        """Outcomes waiting for the next flush."""
        return len(self._queue) if self._queue is not None else 0

    def configure_params(self) -> tuple[Any, ...]:
        return eng.configure_params(self.key, self.namespace, self.config)

    def configured(self, row: tuple[Any, ...]) -> None:
        self._configured = True
        self._heard(eng.reply(row))

    def _heard(self, reply: eng.Reply) -> eng.Reply:
        # Replies and announcements race; a reply never undoes a newer announcement.
        last = self._last
        if last is None or reply.generation >= last.generation:
            self._last = reply
        self._trusted = True
        return reply

    def invalidate(self, *, keep_open: bool = False) -> None:
        """Forget cached verdicts: the next call asks the server.

        ``keep_open`` keeps a held OPEN verdict: right when listening first starts,
        every held one was taken unheard and so is already capped at a second.
        """
        if not keep_open:
            self._open_deadline = 0
        self._trusted = False

    def announced(self, event: _pg_notify.Transition) -> None:
        """A transition of this breaker committed somewhere in the fleet."""
        last = self._last
        if last is None or event.generation > last.generation:
            self._last = eng.Reply(event.new, event.generation)
            self._open_deadline = 0

    def _local_verdict(self) -> Admission | None:
        deadline = self._open_deadline
        if deadline:
            now = time.monotonic_ns()
            if now < deadline:
                last = self._last
                generation = last.generation if last is not None else 0
                return Admission(False, CircuitState.OPEN, generation, self._open_until - now)
            self._open_deadline = 0
        if self._cached and self._trusted and self._store.listening():
            last = self._last
            if last is not None and last.state is CircuitState.CLOSED:
                admission = self._admit_closed
                if admission.generation != last.generation:
                    admission = self._admit_closed = Admission(
                        True, CircuitState.CLOSED, last.generation, None
                    )
                return admission
        return None

    def _admitted(self, row: tuple[Any, ...]) -> Admission:
        adm = eng.admission(row)
        self._heard(eng.Reply(adm.state, adm.generation))
        if adm.state is CircuitState.OPEN and adm.retry_after:
            # A remaining duration, on our monotonic clock: never an absolute server time.
            # It is held for the whole cooldown only while NOTIFY can end it early (a
            # peer forcing CLOSED, a reset); unheard, for a second at most.
            hold = adm.retry_after
            if not self._store.listening():
                self._store.listen()
                hold = min(hold, UNHEARD_OPEN_HOLD_NS)
            now = time.monotonic_ns()
            self._open_until = now + adm.retry_after
            self._open_deadline = now + hold
            last = self._last
            if last is not None and last.generation > adm.generation:
                self._open_deadline = 0  # a newer transition was announced meanwhile
        return adm

    def _recorded(self, row: tuple[Any, ...]) -> eng.Reply:
        return self._heard(eng.reply(row))

    def _queued(self, success: bool, generation: int | None) -> eng.Reply | None:
        """Queue the outcome if it belongs to a CLOSED phase; half-open trials go at once."""
        queue, last = self._queue, self._last
        if (
            queue is not None
            and last is not None
            and last.state is CircuitState.CLOSED
            and generation == last.generation
        ):
            queue.put(success, generation)
            return last
        return None

    def acquire(self) -> Admission:
        return self._local_verdict() or self._admitted(
            self._store.fetch(self, self._store.statements.acquire, (self.key, self.namespace))
        )

    async def aacquire(self) -> Admission:
        return self._local_verdict() or self._admitted(
            await self._store.afetch(
                self, self._store.statements.acquire, (self.key, self.namespace)
            )
        )

    def record(self, success: bool, generation: int | None) -> eng.Reply:
        return self._queued(success, generation) or self._recorded(
            self._store.fetch(
                self,
                self._store.statements.record,
                (self.key, success, self.namespace, generation),
            )
        )

    async def arecord(self, success: bool, generation: int | None) -> eng.Reply:
        return self._queued(success, generation) or self._recorded(
            await self._store.afetch(
                self,
                self._store.statements.record,
                (self.key, success, self.namespace, generation),
            )
        )

    def flush(self) -> None:
        """Send the queued outcomes in one ``rc_record_many`` (kept if the database is down)."""
        queue = self._queue
        if queue is None:
            return
        with self._flushing:
            if len(queue):
                self._send(queue)

    def _send(self, queue: _pg_batch.OutcomeQueue) -> None:
        batch = queue.take()
        successes, generations = _pg_batch.split(batch)
        try:
            row = self._store.fetch(
                self,
                self._store.statements.record_many,
                (self.key, self.namespace, successes, generations),
            )
        except StorageError:
            queue.give_back(batch)
            return
        reply = self._recorded(row)
        if reply.state is not CircuitState.CLOSED:
            self._trusted = False

    def force(self, state: CircuitState) -> eng.Reply:
        self.invalidate()
        return self._recorded(
            self._store.fetch(
                self, self._store.statements.force, (self.key, state.value, self.namespace)
            )
        )

    def reset(self) -> eng.Reply:
        self.invalidate()
        return self._recorded(
            self._store.fetch(self, self._store.statements.reset, (self.key, self.namespace))
        )

    def snapshot(self) -> Snapshot:
        self.flush()
        row = self._store.fetch(
            self, self._store.statements.status, (self.key, self.namespace), missing_ok=True
        )
        snap = eng.snapshot(row, self.config)
        self._heard(eng.Reply(snap.state, snap.generation))
        return snap


class PostgresStorage(CircuitBreakerStorage):
    """Breakers shared through PostgreSQL by every process that uses the same database.

    ``dsn`` is any libpq connection string or URI. ``connect_timeout`` bounds how long
    a call may wait for the database (connection and pool), ``statement_timeout`` how
    long one function may run; after a failure the store skips the database for a
    short, growing backoff instead of making every call wait.
    """

    def __init__(
        self,
        dsn: str,
        *,
        namespace: str | None = None,
        schema: str | None = None,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
        max_connections: int = 10,
        flush_interval: float = 0.05,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError("`dsn` must be a non-empty connection string")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("statement_timeout", statement_timeout),
            ("flush_interval", flush_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError("`max_connections` must be an int")
        if max_connections < 1:
            raise ValueError(f"`max_connections` must be >= 1, got {max_connections}")
        self.dsn = dsn
        self.namespace = check_name(
            namespace if namespace is not None else default_namespace(), "namespace"
        )
        self.schema = check_name(schema if schema is not None else database_schema(), "schema")
        self.connect_timeout = float(connect_timeout)
        self.statement_timeout = float(statement_timeout)
        self.max_connections = max_connections
        self.statements = eng.Statements.for_schema(self.schema)
        self.outage = eng.Outage(self._describe())
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._apools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
        self._breakers: dict[tuple[str, str], PgBreaker] = {}
        self._listener: _pg_notify.Listener | None = None
        self._listened = False  # has a LISTEN connection ever been up?
        self._flusher = _pg_batch.Flusher(float(flush_interval), self.flush)

    def _describe(self) -> str:
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            return "PostgreSQL"
        host = info.get("host") or "localhost"
        return f"postgresql://{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"

    # -- connections --------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        # libpq's connect_timeout is whole seconds (2 at least); the pool's own
        # timeout bounds the wait more finely.
        return {
            "autocommit": True,
            "connect_timeout": max(2, round(self.connect_timeout)),
            "options": f"-c statement_timeout={int(self.statement_timeout * 1000)}"
            f" -c lock_timeout={int(self.statement_timeout * 1000)}",
            "application_name": "resilient_circuit",
        }

    def pool(self) -> ConnectionPool:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self.dsn,
                        min_size=1,
                        max_size=self.max_connections,
                        kwargs=self._connect_kwargs(),
                        timeout=self.connect_timeout,
                        reconnect_timeout=0,
                        name="resilient_circuit",
                        open=False,
                    )
                    self._pool.open(wait=False)
                pool = self._pool
        return pool

    async def apool(self) -> AsyncConnectionPool:
        # An async pool belongs to the event loop that opened it.
        loop = asyncio.get_running_loop()
        pool = self._apools.get(loop)
        if pool is None:
            pool = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.max_connections,
                kwargs=self._connect_kwargs(),
                timeout=self.connect_timeout,
                reconnect_timeout=0,
                name="resilient_circuit_async",
                open=False,
            )
            self._apools[loop] = pool
            await pool.open(wait=False)
        return pool

    def close(self) -> None:
        """Flush queued outcomes, stop listening, close the sync pool.

        Async pools belong to their event loop: close them with ``aclose``.
        """
        self._flusher.stop()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close the async pool of the running event loop."""
        pool = self._apools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()

    # -- one round trip -----------------------------------------------------------

    def _failed(self, exc: Exception, started: float | None = None) -> StorageError:
        if isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) == "22023":
            raise ValueError(str(exc).strip()) from exc
        if not _unavailable(exc):
            raise exc
        if _connection_lost(exc):
            # Idle connections opened before this one died are most likely dead too:
            # replace them now, or each would fail once after the database is back.
            pool = self._pool
            if pool is not None:
                pool.drain()
            for loop, apool in list(self._apools.items()):
                try:
                    loop.call_soon_threadsafe(_drain_async, apool)
                except RuntimeError:  # that event loop is closed
                    pass
        self.outage.failed(exc, started)
        return StorageError(f"breaker storage unavailable: {eng.one_line(exc)}")

    def _begin(self, statement: Any) -> tuple[bool, float]:
        """Before a round trip (sync or async): skip a database known down, note the time."""
        if self.outage.skip(self.connect_timeout + self.statement_timeout):
            raise StorageError("breaker storage unavailable (backing off)")
        # Admission (while CLOSED) and status only read, which a read-only or locked
        # database still answers: for a store that records, only a write ends an outage.
        wrote = statement is not self.statements.acquire and statement is not self.statements.status
        return wrote, time.monotonic()

    def _finish(self, row: Any, started: float, wrote: bool, missing_ok: bool) -> Any:
        """After a round trip that got its answer: maybe end an outage, check the row."""
        if self.outage.down_since is not None:
            self.outage.succeeded(started, wrote or not self._breakers)
        if row is None and not missing_ok:
            raise StorageError("breaker function returned no row")
        return row

    def fetch(
        self,
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
        *,
        missing_ok: bool = False,
    ) -> Any:
        """Run one statement (configuring the breaker first if it never was)."""
        wrote, started = self._begin(statement)
        try:
            with self.pool().connection(timeout=self.connect_timeout) as conn:
                if breaker is not None and not breaker._configured:
                    wrote = True
                    configured = conn.execute(
                        self.statements.configure, breaker.configure_params(), prepare=True
                    ).fetchone()
                    if configured is not None:
                        breaker.configured(configured)
                row = conn.execute(statement, params, prepare=True).fetchone()
        except Exception as exc:
            raise self._failed(exc, started) from exc
        return self._finish(row, started, wrote, missing_ok)

    async def afetch(
        self,
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
        *,
        missing_ok: bool = False,
    ) -> Any:
        """The coroutine twin of ``fetch``: same statements, awaited on an async pool."""
        wrote, started = self._begin(statement)
        try:
            pool = await self.apool()
            async with pool.connection(timeout=self.connect_timeout) as conn:
                if breaker is not None and not breaker._configured:
                    wrote = True
                    cur = await conn.execute(
                        self.statements.configure, breaker.configure_params(), prepare=True
                    )
                    configured = await cur.fetchone()
                    if configured is not None:
                        breaker.configured(configured)
                cur = await conn.execute(statement, params, prepare=True)
                row = await cur.fetchone()
        except Exception as exc:
            raise self._failed(exc, started) from exc
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
    ) -> PgBreaker:
        """Bind a breaker and store ``config`` in its row (now, or on first contact)."""
        with self._lock:
            found = self._breakers.get((namespace, resource_key))
            if found is None:
                found = PgBreaker(self, resource_key, namespace, config)
                self._breakers[(namespace, resource_key)] = found
            else:
                found.config = config
                found._configured = False
        # Outside the lock: the modes may start the listener or the flusher.
        found.set_modes(admission, recording)
        try:
            found.configured(self.fetch(None, self.statements.configure, found.configure_params()))
        except StorageError:
            pass  # configured on the first call that reaches the database
        return found

    def breakers(self) -> list[PgBreaker]:
        with self._lock:
            return list(self._breakers.values())

    # -- transitions and batches ------------------------------------------------------

    def listen(self) -> None:
        """Start the LISTEN connection that keeps cached verdicts honest."""
        with self._lock:
            if self._listener is None:
                self._listener = _pg_notify.Listener(
                    self.dsn, self._connect_kwargs(), self._announced
                )
                self._listener.start()

    def listening(self) -> bool:
        listener = self._listener
        return listener is not None and listener.healthy

    def wait_listening(self, timeout: float = 5.0) -> bool:
        """Block until the LISTEN connection is up (for start-up and tests)."""
        listener = self._listener
        return listener is not None and listener.wait_until_listening(timeout)

    def _announced(self, event: _pg_notify.Transition | None) -> None:
        if event is None:
            # (Re)connected: what happened while not listening is unknown.
            first = not self._listened
            self._listened = True
            for each in self.breakers():
                each.invalidate(keep_open=first)
            return
        found = self._breakers.get((event.namespace, event.resource_key))
        if found is not None:
            found.announced(event)

    def start_flusher(self) -> None:
        self._flusher.start()

    def flush(self) -> None:
        """Send every breaker's queued outcomes now."""
        for found in self.breakers():
            found.flush()

    def watch(self, *, timeout: float | None = None) -> Iterator[_pg_notify.Transition]:
        """Transitions of every breaker in the database, as they commit."""
        return _pg_notify.watch(self.dsn, timeout=timeout)

    def awatch(self, *, timeout: float | None = None) -> AsyncIterator[_pg_notify.Transition]:
        """The async twin of ``watch``."""
        return _pg_notify.awatch(self.dsn, timeout=timeout)

    # -- 0.4.5's admin API ----------------------------------------------------------

    def get_state(self, resource_key: str, namespace: str | None = None) -> dict[str, Any] | None:
        row = self.fetch(
            None,
            self.statements.status,
            (resource_key, namespace or self.namespace),
            missing_ok=True,
        )
        if row is None:
            return None
        open_until: datetime | None = row[4]
        return {
            "state": row[0],
            "failure_count": row[3],
            "open_until": open_until.timestamp() if open_until is not None else 0,
            "execution_log": list(eng.window(row[2])),
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
        admin = check_admin_state(resource_key, state, failure_count, open_until, execution_log)
        until = (
            datetime.fromtimestamp(admin.open_until, timezone.utc)
            if admin.state is CircuitState.OPEN and admin.open_until
            else None
        )
        ns = namespace or self.namespace
        self.fetch(
            None,
            self.statements.set_state,
            {
                "key": resource_key,
                "ns": ns,
                "state": admin.state.value,
                "fc": admin.failure_count,
                "until": until,
                "log": list(admin.window),
            },
            missing_ok=True,
        )
        found = self._breakers.get((ns, resource_key))
        if found is not None:
            found.invalidate()


_shared: dict[tuple[str, str | None], PostgresStorage] = {}
_shared_lock = threading.Lock()


def shared_storage(dsn: str, namespace: str | None) -> PostgresStorage:
    """One PostgresStorage (one pool) per DSN and namespace in this process."""
    with _shared_lock:
        found = _shared.get((dsn, namespace))
        if found is None:
            found = _shared[(dsn, namespace)] = PostgresStorage(dsn, namespace=namespace)
        return found
