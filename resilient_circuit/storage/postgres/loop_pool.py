"""The async pools of event loops: one shared connection budget, and an end with the loop.

Every event loop of a process gets a pool of its own (an async pool belongs to the loop
that opened it), and all of them draw from one ``Budget`` of connections. A loop's
pool closes when ``asyncio.run`` ends the loop; a loop ended otherwise (``loop.close()``
without shutting down its async generators) leaves a pool that nothing can await any
more: ``discard`` closes its idle connections without that loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from contextvars import ContextVar
from heapq import heappop
from time import monotonic
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.pool_async import MaintenanceTask, StopWorker
from psycopg_pool.sched_async import AsyncScheduler

from resilient_circuit.storage.postgres.idle import ended_while_idle
from resilient_circuit.storage.postgres.outage import Attempts, connect_refusal
from resilient_circuit.storage.postgres.prepared import AsyncStoreConnection

__all__ = ("POOL_NAME", "Budget", "BudgetSpent", "LoopPool", "budgeted_connection_class")

logger = logging.getLogger("resilient_circuit.storage")

POOL_NAME = "resilient_circuit_async"


class BudgetSpent(psycopg.OperationalError):
    """Every share of the budget is taken: another loop's pool holds it."""


# Set while psycopg_pool reports an attempt that the budget refused, so that the
# "reconnection attempt failed" record of that same attempt goes too (same task).
_refused_attempt: ContextVar[bool] = ContextVar("_refused_attempt", default=False)


class _NotAConnectionError(logging.Filter):
    """Drops psycopg_pool's WARNINGs about a loop pool's attempt that failed for no
    connection reason: one the loop's end cancelled (nothing failed, nothing is
    retried), or one the budget refused (contention between loops, which the pool
    waits out; if it waits too long the call alone is handled per on_storage_error, with
    a WARNING naming max_connections: see ``Pools.starved``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 2 and args[0] == POOL_NAME):
            return True
        if isinstance(args[1], asyncio.CancelledError):
            return False
        if isinstance(args[1], BudgetSpent):
            _refused_attempt.set(True)
            return False
        if isinstance(args[1], BaseException):
            _refused_attempt.set(False)
            return True
        refused = _refused_attempt.get()  # the attempt's "reconnection attempt failed"
        _refused_attempt.set(False)
        return not refused


logging.getLogger("psycopg.pool").addFilter(_NotAConnectionError())

# Tasks started from other threads' callbacks or by workers: kept referenced until done.
_pending: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[Any]) -> None:
    _pending.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Future[Any]) -> None:
    _pending.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a worker logs it, unless the loop ended it first


class Budget:
    """How many more connections the event loops' pools may open, together.

    A pool refused a share waits for one: when a share comes back, every pool that was
    refused is told to try again if it still has callers waiting (else they would wait
    for a connection that only their own pool, which has none, could return).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._used = 0
        # Re-entrant: a connection dropped without close() gives its share back from the
        # cyclic collector, which any allocation may start, in whatever thread, also one
        # that holds this lock already (an exception raised by take_now, a new dict).
        self._lock = threading.RLock()
        self._refused: dict[LoopPool, asyncio.AbstractEventLoop] = {}

    def available(self) -> bool:
        """Whether a share is free now (a hint: ``take_now`` decides)."""
        return self._used < self.size

    def take_now(self) -> None:
        """A share, or the error at once. Never a wait here: the pool's client waits
        instead (bounded by its timeout), and ``give_back`` wakes its pool."""
        with self._lock:
            if self._used >= self.size:
                raise BudgetSpent(
                    f"all {self.size} connections of the store's budget (max_connections)"
                    " are in use"
                )
            self._used += 1

    def give_back(self) -> None:
        with self._lock:
            self._used -= 1
            refused, self._refused = self._refused, {}
        for pool, loop in refused.items():
            try:
                loop.call_soon_threadsafe(pool.grow_if_waiting)
            except RuntimeError:  # that event loop is closed: nobody waits there
                pass

    def refused(self, pool: LoopPool) -> None:
        """``pool`` (in the running loop) found no share free: wake it on the next one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._refused[pool] = loop
            freed_meanwhile = self._used < self.size
        if freed_meanwhile:  # a share came back before this pool asked to be woken
            self.forget(pool)
            loop.call_soon(pool.grow_if_waiting)

    async def failed_to_grow(self, pool: AsyncConnectionPool) -> None:
        """``pool`` gave up opening a connection (``reconnect_failed``), most likely
        refused a share by another loop's pool that took the last one: wake it on the
        next share (only then: during an outage, that is not a busy loop)."""
        if isinstance(pool, LoopPool):
            with self._lock:
                self._refused[pool] = asyncio.get_running_loop()

    def forget(self, pool: LoopPool) -> None:
        with self._lock:
            self._refused.pop(pool, None)


def budgeted_connection_class(budget: Budget) -> type[AsyncStoreConnection]:
    """An async connection class that holds a share of ``budget`` while it exists.

    The share is given back on ``close()``, or when the pool drops a broken
    connection without closing it (its socket lives until then anyway).
    """

    class AsyncBudgetedConnection(AsyncStoreConnection):
        _share: weakref.finalize[[], None] | None = None

        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> AsyncBudgetedConnection:
            budget.take_now()
            try:
                conn = await super().connect(conninfo, **kwargs)
            except BaseException:
                budget.give_back()
                raise
            conn._share = weakref.finalize(conn, budget.give_back)  # type: ignore[arg-type]
            return conn

        async def close(self) -> None:
            try:
                await super().close()
            finally:
                self.give_share_back()

        def give_share_back(self) -> None:
            if self._share is not None:
                self._share()

    return AsyncBudgetedConnection


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` passes; a cancellation always gets through.

    (``asyncio.wait_for`` before Python 3.12 loses a cancellation that arrives as the
    awaited thing completes.)
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()


async def run_schedule(sched: AsyncScheduler) -> None:
    """psycopg_pool's ``AsyncScheduler.run``, but ended by the first cancellation.

    Its own loop can swallow the cancellation ``asyncio.run`` sends as it ends the loop
    (waiting through ``wait_for``, and catching ``CancelledError`` around each action),
    then waits on for ever. The actions (``MaintenanceTask.tick``) only queue a task for
    a worker and never suspend.
    """
    queue = sched._queue
    while True:
        async with sched._lock:
            now = monotonic()
            task = queue[0] if queue else None
            if task is not None and task.time <= now:
                heappop(queue)
            else:
                delay = task.time - now if task is not None else sched.EMPTY_QUEUE_TIMEOUT
                task = None
            sched._event.clear()
        if task is None:
            await _wait(sched._event, delay)
        elif task.action is None:
            return
        else:
            try:
                await task.action()
            except Exception as ex:
                logger.warning(
                    "scheduled task %s failed: %s: %s", task.action, type(ex).__name__, ex
                )


class LoopPool(AsyncConnectionPool):
    """The async pool of one event loop, whose workers end when the loop ends them.

    ``asyncio.run`` ends a loop by cancelling every task on it (the pool's scheduler and
    workers too) and waiting for all of them: a task that survives its cancellation
    keeps ``asyncio.run`` from ever returning, and its thread, and the process at exit.
    """

    def __init__(
        self,
        *args: Any,
        budget: Budget,
        describe_failure: Callable[[BaseException], str],
        **kwargs: Any,
    ) -> None:
        self.budget = budget
        self._describe_failure = describe_failure
        #: Why the last connection attempt failed (None once one succeeds), as the
        #: sync pool keeps it (see ``SyncPool``).
        self.rc_connect_failure: str | None = None
        self.rc_connect_refusal: str | None = None
        #: The attempts under way (see ``Attempts``), all in this pool's event loop.
        self.rc_attempts = Attempts(nullcontext())
        super().__init__(*args, reconnect_failed=budget.failed_to_grow, **kwargs)

    async def _connect(self, timeout: float | None = None) -> Any:
        attempt = self.rc_attempts.begin()
        try:
            conn = await super()._connect(timeout)
        except BudgetSpent:
            raise  # refused by the budget, not by the database: nothing to tell
        except Exception as exc:
            self.rc_connect_failure = self._describe_failure(exc)
            self.rc_connect_refusal = refusal = connect_refusal(exc)
            if refusal is not None:
                await self._fail_waiting(exc)
            raise
        finally:
            self.rc_attempts.end(attempt)
        self.rc_connect_failure = self.rc_connect_refusal = None
        return conn

    async def _fail_waiting(self, exc: Exception) -> None:
        """As the sync pool does (see ``SyncPool``): the callers waiting get ``exc`` now."""
        async with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for pos in waiting:
            await pos.fail(exc)

    async def _getconn_unchecked(self, timeout: float) -> Any:
        # As the sync pool does (see ``SyncPool``): a connection ended while it was idle
        # is closed, which gives its share of the budget back, and replaced.
        deadline = monotonic() + timeout
        while True:
            conn = await super()._getconn_unchecked(deadline - monotonic())
            if not ended_while_idle(conn):
                return conn
            await conn.close()
            if await self._maybe_close_connection(conn):
                self._check_open_getconn()  # closed meanwhile: no connection will come
            # As a connection that failed the pool's check on its way out: counted as
            # lost and replaced, quietly.
            await self._putconn(conn, from_getconn=True)

    def _start_workers(self) -> None:
        self._sched_runner = asyncio.create_task(
            run_schedule(self._sched), name=f"{self.name}-scheduler"
        )
        for i in range(self.num_workers):
            worker = asyncio.create_task(self.worker(self._tasks), name=f"{self.name}-worker-{i}")
            self._workers.append(worker)

    @classmethod
    async def worker(cls, q: Any) -> None:
        """psycopg_pool's worker loop, each task in a task of its own.

        The pool's tasks catch ``CancelledError`` so that a failed task never kills a
        worker: a cancellation that arrives while a worker is connecting is taken for a
        failed attempt. When that cancellation is the one ``asyncio.run`` sends every
        task as it ends the loop, the worker goes back to its queue and waits for ever,
        and ``asyncio.run`` never returns. Awaited through a shield, the task runs apart:
        the cancellation reaches the worker at its own ``await`` and ends it (the task,
        cancelled in turn, finishes on its own). Nothing else cancels a task or a
        worker while the pool is open, so a worker never outlives a cancellation.
        """
        while True:
            task: MaintenanceTask = await q.get()
            if isinstance(task, StopWorker):
                return
            job = asyncio.ensure_future(task.run())
            _keep(job)
            try:
                await asyncio.shield(job)
            except Exception as ex:
                logger.warning("task run %s failed: %s: %s", task, type(ex).__name__, ex)

    def _maybe_grow_pool(self) -> None:
        # With the budget spent, an attempt would only fail (and log it): wait for a
        # share to come back instead, within the waiting callers' own timeout.
        if not self._growing and self._nconns < self._max_size and not self.budget.available():
            self.budget.refused(self)
            return
        super()._maybe_grow_pool()

    def grow_if_waiting(self) -> None:
        """From the pool's loop: open a connection if callers still wait for one."""
        if self.closed:  # its loop may be ending: start nothing there
            return

        async def grow() -> None:
            async with self._lock:
                if self._waiting and not self.closed:
                    self._maybe_grow_pool()

        _keep(asyncio.ensure_future(grow()))

    def discard(self) -> None:
        """Close the idle connections of a pool whose loop is closed, without that loop.

        Nothing can run there any more: the connections are ended from this thread,
        their shares of the budget given back, and the pool marked closed. Connections
        a task of that loop had taken are ended when collected.
        """
        self._closed = True
        self.budget.forget(self)
        conns, self._pool = list(self._pool), type(self._pool)()
        for conn in conns:
            conn._closed = True
            conn.pgconn.finish()
            give_back = getattr(conn, "give_share_back", None)
            if give_back is not None:
                give_back()
