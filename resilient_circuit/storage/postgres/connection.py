"""How the store connects: its connection settings, one sync pool, one async pool per loop.

Pools open on first use (constructing a store does no I/O). Sync callers share a
``ConnectionPool``; coroutines use an ``AsyncConnectionPool`` of their own event
loop, since an async pool belongs to the loop that opened it (never a thread).
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from resilient_circuit._dsn import Dsn

__all__ = ("Pools", "describe")


def describe(dsn: str) -> str:
    """Where ``dsn`` points, for messages: host, port and database, never a password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL"
    host = info.get("host") or "localhost"
    return f"postgresql://{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


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


class Pools:
    """The store's connection pools: one for threads, one per running event loop."""

    def __init__(
        self,
        dsn: Dsn,
        *,
        connect_timeout: float,
        statement_timeout: float,
        max_connections: int,
    ) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._sync: ConnectionPool | None = None
        self._async: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}

    def connect_kwargs(self) -> dict[str, Any]:
        """Every connection's settings: autocommit and the store's timeouts."""
        # libpq's connect_timeout is whole seconds (2 at least); the pool's own
        # timeout bounds the wait more finely. The server counts statement_timeout in
        # whole milliseconds and reads 0 as "none": round up, never down to 0.
        timeout_ms = max(1, math.ceil(self.statement_timeout * 1000))
        return {
            "autocommit": True,
            "connect_timeout": max(2, round(self.connect_timeout)),
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            "application_name": "resilient_circuit",
            # Apart from the conninfo string, so that no message built from it shows it.
            **self.dsn.connect_kwargs(),
        }

    def sync(self) -> ConnectionPool:
        """The pool of sync callers, opened (without waiting) on first use."""
        pool = self._sync
        if pool is None:
            with self._lock:
                if self._sync is None:
                    self._sync = ConnectionPool(
                        self.dsn.conninfo,
                        min_size=1,
                        max_size=self.max_connections,
                        kwargs=self.connect_kwargs(),
                        timeout=self.connect_timeout,
                        reconnect_timeout=0,
                        name="resilient_circuit",
                        open=False,
                    )
                    self._sync.open(wait=False)
                pool = self._sync
        return pool

    async def running_loop(self) -> AsyncConnectionPool:
        """The pool of the running event loop, opened (without waiting) on first use."""
        loop = asyncio.get_running_loop()
        pool = self._async.get(loop)
        if pool is None:
            pool = AsyncConnectionPool(
                self.dsn.conninfo,
                min_size=1,
                max_size=self.max_connections,
                kwargs=self.connect_kwargs(),
                timeout=self.connect_timeout,
                reconnect_timeout=0,
                name="resilient_circuit_async",
                open=False,
            )
            self._async[loop] = pool
            await pool.open(wait=False)
        return pool

    def drain(self) -> None:
        """Replace every pool's idle connections (each async pool within its own loop)."""
        pool = self._sync
        if pool is not None:
            pool.drain()
        for loop, apool in list(self._async.items()):
            try:
                loop.call_soon_threadsafe(_drain_async, apool)
            except RuntimeError:  # that event loop is closed
                pass

    def close(self) -> None:
        """Close the sync pool (async pools belong to their loops: see ``aclose``)."""
        with self._lock:
            pool, self._sync = self._sync, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close the async pool of the running event loop."""
        pool = self._async.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
