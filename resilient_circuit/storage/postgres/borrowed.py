"""Connections the application owns: its psycopg pools, or a connection factory.

The store borrows one connection per round trip and gives it back. It never opens,
drains or closes the application's pools and never changes its connections' session
settings; a connection not in autocommit runs each round trip in a transaction of
its own, committed before it is given back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    contextmanager,
    nullcontext,
)
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ("Borrowed", "ConnectionFactory", "FactoryPool", "SyncSource")

_CONNINFO_PARTS = frozenset({"host", "hostaddr", "port", "dbname", "user", "password"})

#: Returns a psycopg ``Connection`` (closed after the round trip) or a context manager
#: that yields one (``ConnectionPool.connection`` of a pool the application owns).
ConnectionFactory = Callable[[], Any]


class SyncSource(Protocol):
    """Where sync round trips get a connection: a ``ConnectionPool`` or a factory."""

    def connection(
        self, timeout: float | None = None
    ) -> AbstractContextManager[psycopg.Connection[Any]]: ...


class FactoryPool:
    """A connection factory seen as a pool: ``connection()`` lends one for a block."""

    def __init__(self, factory: ConnectionFactory) -> None:
        self._factory = factory

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        made = self._factory()
        if isinstance(made, psycopg.Connection):
            with made:  # commits (or rolls back) and closes
                yield made
            return
        if not isinstance(made, AbstractContextManager):
            raise TypeError(
                "`connection_factory` must return a psycopg Connection or a context"
                f" manager yielding one, got {type(made).__name__}"
            )
        with made as conn:
            if not isinstance(conn, psycopg.Connection):
                raise TypeError(
                    "`connection_factory`'s context manager must yield a psycopg"
                    f" Connection, got {type(conn).__name__}"
                )
            yield conn


class Borrowed:
    """The application's connections, behind the same interface as the store's own pools.

    ``pool`` is a ``ConnectionPool``, an ``AsyncConnectionPool`` or a pair of both;
    coroutines use the async one (a sync source alone serves them from a worker
    thread, so the event loop never blocks), sync callers the sync one.
    """

    def __init__(self, pool: Any = None, factory: ConnectionFactory | None = None) -> None:
        pools = pool if isinstance(pool, tuple | list) else (pool,) if pool is not None else ()
        self._sync: SyncSource | None = None
        self._async: AsyncConnectionPool | None = None
        conninfo: list[str] = []
        for each in pools:
            if isinstance(each, ConnectionPool) and self._sync is None:
                self._sync = each
            elif isinstance(each, AsyncConnectionPool) and self._async is None:
                self._async = each
            else:
                raise TypeError(
                    "`pool` must be a psycopg_pool ConnectionPool, an AsyncConnectionPool,"
                    f" or one of each, got {type(each).__name__}"
                )
            # Parts of the connection string a pool may keep in its kwargs instead.
            parts = {k: str(v) for k, v in (each.kwargs or {}).items() if k in _CONNINFO_PARTS}
            conninfo.append(make_conninfo(each.conninfo, **parts))
        if factory is not None:
            if not callable(factory):
                raise TypeError("`connection_factory` must be callable")
            self._sync = FactoryPool(factory)
        #: The pools' connection string, when they have one (for LISTEN and messages).
        self.conninfo: str | None = next((c for c in conninfo if c), None)

    @property
    def serves_sync(self) -> bool:
        return self._sync is not None

    @property
    def serves_async(self) -> bool:
        return self._async is not None

    def sync(self) -> SyncSource:
        if self._sync is None:
            raise TypeError(
                "this PostgresStorage was given only an AsyncConnectionPool: sync calls"
                " need a ConnectionPool too, pool=(ConnectionPool, AsyncConnectionPool)"
            )
        return self._sync

    async def running_loop(self) -> AsyncConnectionPool:
        assert self._async is not None  # the store runs sync sources in a thread instead
        return self._async

    def scope(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """A connection not in autocommit commits each round trip on its own."""
        return nullcontext() if conn.autocommit else conn.transaction()

    def ascope(self, conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[Any]:
        """The coroutine twin of ``scope``."""
        return nullcontext() if conn.autocommit else conn.transaction()

    def connect_kwargs(self) -> dict[str, Any]:
        """Settings of the store's own LISTEN connection."""
        return {"autocommit": True, "connect_timeout": 5, "application_name": "resilient_circuit"}

    def drain(self) -> None:
        """Nothing: the application's pool replaces dead connections by its own checks."""

    def close(self) -> None:
        """Nothing: the application closes its own pools."""

    async def aclose(self) -> None:
        """Nothing: the application closes its own pools."""

    def abandon(self) -> None:
        """In a forked child, nothing either: the application's pools are its own to reset."""


async def in_thread(call: Callable[[], Any]) -> Any:
    """Run a sync round trip off the event loop."""
    return await asyncio.to_thread(call)
