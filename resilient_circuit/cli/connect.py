"""Connecting for the CLI: libpq's failures rewritten as one line the user can act on.

libpq gives no SQLSTATE for a failed connection, so its (English) message is all
there is to tell "no server", "no such database" and "login refused" apart; a
missing database comes with the ``createdb`` command that creates it.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from resilient_circuit._dsn import Dsn
from resilient_circuit._installer import PermissionDenied, SetupError, Target
from resilient_circuit.storage.postgres.outage import (
    DATABASE_MISSING,
    LOGIN_REFUSED,
    connect_reason,
    connect_refusal,
)

__all__ = (
    "CannotConnect",
    "DatabaseNotFound",
    "ServerUnreachable",
    "connect",
    "createdb_command",
)


class CannotConnect(SetupError):
    """The server refused the connection for a reason not covered by a subclass."""

    def __init__(self, message: str, target: Target) -> None:
        super().__init__(message)
        self.target = target


class ServerUnreachable(CannotConnect):
    """No PostgreSQL server answered (refused, timed out, unknown host, no socket)."""


class DatabaseNotFound(CannotConnect):
    """The server answered but the database does not exist."""


def createdb_command(target: Target) -> str:
    """The shell command that creates the missing database."""
    args = ["createdb", "-h", target.host, "-p", target.port, "-U", target.user, target.dbname]
    return " ".join(shlex.quote(arg) for arg in args)


def _connect_target(dsn: str, exc: psycopg.Error | None) -> Target:
    # After a failed attempt libpq reports what it actually tried (defaults and
    # PG* variables applied); before one, fall back to parsing the DSN ourselves.
    pgconn = getattr(exc, "pgconn", None)
    if pgconn is not None:
        values = [pgconn.host, pgconn.port, pgconn.db, pgconn.user]
        host, port, dbname, user = (v.decode("utf-8", "replace") for v in values)
        if host or port or dbname or user:
            return Target(host or "localhost", port or "5432", dbname, user)
    params = conninfo_to_dict(dsn)
    env = os.environ
    user = str(params.get("user") or env.get("PGUSER") or "postgres")
    return Target(
        str(params.get("host") or env.get("PGHOST") or "localhost"),
        str(params.get("port") or env.get("PGPORT") or "5432"),
        str(params.get("dbname") or env.get("PGDATABASE") or user),
        user,
    )


def connect(dsn: str, *, connect_timeout: int = 10) -> psycopg.Connection[Any]:
    """Open an autocommit connection, turning failures into one-line ``SetupError``s."""
    try:
        parsed = Dsn(dsn)
    except ValueError as exc:
        # The message masks the password; the chained libpq error would not.
        raise SetupError(f"invalid database DSN: {exc}") from None
    dsn = parsed.conninfo
    params = conninfo_to_dict(dsn)
    extra: dict[str, Any] = parsed.connect_kwargs()
    # Without a timeout an unreachable host hangs for the OS's TCP timeout (minutes).
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = connect_timeout
    try:
        return psycopg.connect(dsn, autocommit=True, **extra)
    except psycopg.OperationalError as exc:
        target = _connect_target(dsn, exc)
        # libpq messages span lines and repeat the address; keep the server's words.
        reason = connect_reason(exc)
        message = str(exc)
        # The store tells these apart from an outage by the same (English) words.
        refusal = connect_refusal(exc)
        if refusal == DATABASE_MISSING:
            raise DatabaseNotFound(f"{target} does not exist", target) from exc
        if refusal == LOGIN_REFUSED:
            raise PermissionDenied(f"{target}: login refused: {reason}") from exc
        if "FATAL" not in message and "server closed" not in message:
            # libpq itself failed: no server spoke to us at all.
            raise ServerUnreachable(
                f"cannot reach PostgreSQL for {target}: {reason}", target
            ) from exc
        raise CannotConnect(f"cannot connect to {target}: {reason}", target) from exc
