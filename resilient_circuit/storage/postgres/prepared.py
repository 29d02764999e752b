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
    #: Per statement: psycopg's loaders of its columns, set from its first reply since
    #: it was prepared (a prepared statement's columns cannot change: PostgreSQL
    #: refuses to run one whose result type would).
    rc_loaders: dict[bytes, abc.Transformer] | None = None


class StoreConnection(Prepares, psycopg.Connection[Any]):
    """A connection of the store's own sync pool."""

    #: While taken by a sync caller of the store (see ``Pools.take``): the pool it came
    #: from, when it was taken, when it was last parked.
    rc_pool: Any = None
    #: Out of the pool for the application (``PostgresStorage.pool()``), not the store.
    rc_lent = False
    rc_taken_at = 0.0
    rc_parked_at = 0.0


class AsyncStoreConnection(Prepares, psycopg.AsyncConnection[Any]):
    """A connection of an event loop's pool of the store."""


def _texts(prepared: Prepared, params: dict[str, Any]) -> list[bytes | None]:
    """The parameters in PostgreSQL's text format (the statements cast each to its type)."""
    values: list[bytes | None] = []
    for name in prepared.params:
        value = params[name]
        kind = type(value)
        if kind is str:
            values.append(value.encode())
        elif value is None:
            values.append(None)
        elif value is True:
            values.append(b"t")
        elif value is False:
            values.append(b"f")
        elif isinstance(value, str):
            values.append(value.encode())
        elif isinstance(value, int):
            values.append(b"%d" % value)
        elif isinstance(value, timedelta):
            values.append(b"%d microseconds" % (value // _US))
        else:
            raise TypeError(f"no text format for a parameter of type {kind.__name__}")
    return values


# One call's exchange with the server, for both kinds of connection: the engine yields
# each of psycopg's generators (send, then read the reply) for its caller to wait on,
# with ``conn.wait`` or ``await conn.wait``, and receives the results; it returns the row.
_Conn = StoreConnection | AsyncStoreConnection
_Engine = Generator["PQGen[list[pq.abc.PGresult]]", "list[pq.abc.PGresult]", Any]


def run(conn: StoreConnection, prepared: Prepared, params: dict[str, Any]) -> Any:
    """Execute ``prepared`` with ``params`` on ``conn``; its first row as a tuple (or None).

    ``_engine``'s exchange, written out for threads: driving a generator costs a call
    about as much as the rest of this function.
    """
    values = _texts(prepared, params)
    pgconn = conn.pgconn
    name = prepared.name
    with conn.lock:
        names = conn.rc_prepared
        if names is None or name not in names:
            _note_prepared(conn, name)
            _prepare_now(conn, pgconn, prepared)
        pgconn.send_query_prepared(name, values, result_format=_BINARY)
        result = conn.wait(execute(pgconn))[-1]
        if result.status != _TUPLES_OK:
            if result.error_field(_SQLSTATE) == _UNKNOWN_STATEMENT:
                _prepare_now(conn, pgconn, prepared)
                pgconn.send_query_prepared(name, values, result_format=_BINARY)
                result = conn.wait(execute(pgconn))[-1]
            if result.status != _TUPLES_OK:
                raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        if not result.ntuples:
            return None
        return _first_row(conn, name, result)


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
    values = _texts(prepared, params)
    names = conn.rc_prepared
    name = prepared.name
    if names is None or name not in names:
        _note_prepared(conn, name)
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
    return _first_row(conn, name, result)


def _first_row(conn: _Conn, name: bytes, result: pq.abc.PGresult) -> Any:
    """The reply's first row, read by the loaders of ``name``'s columns."""
    loaders = conn.rc_loaders
    if loaders is None:
        loaders = conn.rc_loaders = {}
    row_loader = loaders.get(name)
    if row_loader is None:
        row_loader = adapt.Transformer(conn)
        row_loader.set_pgresult(result, format=_BINARY)
        loaders[name] = row_loader
    else:
        row_loader.set_pgresult(result, set_loaders=False)
    return row_loader.load_row(0, tuple)


def _note_prepared(conn: _Conn, name: bytes) -> None:
    """Note ``name`` as prepared on ``conn`` before PREPARE is sent.

    An interruption (Ctrl-C, a cancelled statement's reply) can land once the server
    has prepared it, and preparing again would fail on this connection for good
    ("already exists"). Noted but never prepared, the execution that follows reports
    26000 and prepares it then.
    """
    names = conn.rc_prepared
    if names is None:
        names = conn.rc_prepared = set()
    names.add(name)


def _prepare(conn: _Conn, pgconn: pq.abc.PGconn, prepared: Prepared) -> _Engine:
    """Prepare ``prepared`` on ``conn``, whose lock is held."""
    _forget_columns(conn, prepared)
    pgconn.send_prepare(prepared.name, prepared.text.as_bytes(conn))
    _check_prepared(conn, prepared, (yield execute(pgconn))[-1])


def _prepare_now(conn: StoreConnection, pgconn: pq.abc.PGconn, prepared: Prepared) -> None:
    """``_prepare`` for a thread, waited on at once."""
    _forget_columns(conn, prepared)
    pgconn.send_prepare(prepared.name, prepared.text.as_bytes(conn))
    _check_prepared(conn, prepared, conn.wait(execute(pgconn))[-1])


def _forget_columns(conn: _Conn, prepared: Prepared) -> None:
    # Prepared anew, perhaps on another version of the function: its columns read anew.
    if conn.rc_loaders is not None:
        conn.rc_loaders.pop(prepared.name, None)


def _check_prepared(conn: _Conn, prepared: Prepared, result: pq.abc.PGresult) -> None:
    if result.status != _COMMAND_OK:
        # Refused by the server: not prepared, so prepared again by the next call.
        if conn.rc_prepared is not None:
            conn.rc_prepared.discard(prepared.name)
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
