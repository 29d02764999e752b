"""A call's round trips on the store's own connections, at the cost of libpq's.

``rc_try_acquire`` and ``rc_record`` run twice per strict call, so what the client
spends around them bounds how many calls a few cores serve. psycopg's cursor pays, per
execution, for a cursor and its adapters, the conversion of the query and of its
parameters, and a loader per column; for two statements whose text, parameters and
columns never change that is most of a call's CPU. Here each is prepared once per
connection under a name of its own, executed with ``send_query_prepared``, and its
one row read in binary through psycopg's own loaders, on psycopg's wait (so an
interrupted call still cancels its statement, and other threads run meanwhile).

Only on connections of the store's own pool that reach PostgreSQL directly, with
prepared statements on and UTF-8 as client encoding (``StoreConnection.rc_direct``);
through a pooler every statement keeps psycopg's path and per-transaction timeouts.
Errors are psycopg's own exceptions, built from the server's reply, so that outages,
missing functions and bad arguments are told apart as for any other statement.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import abc, adapt, pq, sql
from psycopg.generators import execute

if TYPE_CHECKING:
    from psycopg.abc import PQGen

__all__ = ("AsyncStoreConnection", "Prepared", "Prepares", "StoreConnection", "arun", "run")

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_BINARY = pq.Format.BINARY
_US = timedelta(microseconds=1)
# A prepared statement the session no longer has (DEALLOCATE or DISCARD ran on it).
_UNKNOWN_STATEMENT = b"26000"
_SQLSTATE = pq.DiagnosticField.SQLSTATE


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement as the store's connections prepare it: its name, its text with
    PostgreSQL's own placeholders, and the parameters' names in their order."""

    name: bytes
    text: sql.Composed
    params: tuple[str, ...]


class Prepares:
    """What a connection of the store's own pools has prepared, and how it reads replies."""

    #: Set when the pool configures it: the statements of ``Prepared`` may run on it.
    rc_direct = False
    rc_prepared: set[bytes] | None = None
    rc_loaders: abc.Transformer | None = None


class StoreConnection(Prepares, psycopg.Connection[Any]):
    """A connection of the store's own sync pool."""

    #: While taken by a sync caller of the store (see ``Pools.take``): the pool it came
    #: from, when it was taken, when it was last parked.
    rc_pool: Any = None
    rc_taken_at = 0.0
    rc_parked_at = 0.0


class AsyncStoreConnection(Prepares, psycopg.AsyncConnection[Any]):
    """A connection of an event loop's pool of the store."""


def _text(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text format (the statements cast each to its type)."""
    if value is None:
        return None
    if value is True:
        return b"t"
    if value is False:
        return b"f"
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, timedelta):
        return b"%d microseconds" % (value // _US)
    raise TypeError(f"no text format for a parameter of type {type(value).__name__}")


# One call's exchange with the server, for both kinds of connection: the engine yields
# each of psycopg's generators (send, then read the reply) for its caller to wait on,
# with ``conn.wait`` or ``await conn.wait``, and receives the results; it returns the row.
_Conn = StoreConnection | AsyncStoreConnection
_Engine = Generator["PQGen[list[pq.abc.PGresult]]", "list[pq.abc.PGresult]", Any]


def run(conn: StoreConnection, prepared: Prepared, params: dict[str, Any]) -> Any:
    """Execute ``prepared`` with ``params`` on ``conn``; its first row as a tuple (or None)."""
    engine = _engine(conn, conn.pgconn, prepared, params)
    with conn.lock:
        try:
            step = next(engine)
            while True:
                step = engine.send(conn.wait(step))
        except StopIteration as done:
            return done.value


async def arun(conn: AsyncStoreConnection, prepared: Prepared, params: dict[str, Any]) -> Any:
    """The coroutine twin of ``run``: the same engine, awaited."""
    engine = _engine(conn, conn.pgconn, prepared, params)
    async with conn.lock:
        try:
            step = next(engine)
            while True:
                step = engine.send(await conn.wait(step))
        except StopIteration as done:
            return done.value


def _engine(
    conn: _Conn, pgconn: pq.abc.PGconn, prepared: Prepared, params: dict[str, Any]
) -> _Engine:
    """Run ``prepared`` on ``conn``, whose lock its caller holds; the first row or None."""
    values = [_text(params[name]) for name in prepared.params]
    names = conn.rc_prepared
    if names is None:
        names = conn.rc_prepared = set()
    name = prepared.name
    if name not in names:
        # Noted before PREPARE is sent: an interruption (Ctrl-C, a cancelled
        # statement's reply) can land once the server has prepared it, and preparing
        # again would fail on this connection for good ("already exists"). Noted but
        # never prepared, the execution below reports 26000 and prepares it then.
        names.add(name)
        yield from _prepare(conn, pgconn, prepared)
    pgconn.send_query_prepared(name, values, result_format=_BINARY)
    result = (yield execute(pgconn))[-1]
    if result.status != _TUPLES_OK and result.error_field(_SQLSTATE) == _UNKNOWN_STATEMENT:
        # Deallocated behind the store's back (DISCARD ALL or DEALLOCATE sent on
        # a pooled connection lent out by ``_get_connection``): prepared again, once.
        yield from _prepare(conn, pgconn, prepared)
        pgconn.send_query_prepared(name, values, result_format=_BINARY)
        result = (yield execute(pgconn))[-1]
    if result.status != _TUPLES_OK:
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    if not result.ntuples:
        return None
    loaders = conn.rc_loaders
    if loaders is None:
        loaders = conn.rc_loaders = adapt.Transformer(conn)
    loaders.set_pgresult(result, format=_BINARY)
    return loaders.load_row(0, tuple)


def _prepare(conn: _Conn, pgconn: pq.abc.PGconn, prepared: Prepared) -> _Engine:
    """Prepare ``prepared`` on ``conn``, whose lock is held."""
    pgconn.send_prepare(prepared.name, prepared.text.as_bytes(conn))
    result = (yield execute(pgconn))[-1]
    if result.status != _COMMAND_OK:
        # Refused by the server: not prepared, so prepared again by the next call.
        if conn.rc_prepared is not None:
            conn.rc_prepared.discard(prepared.name)
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
