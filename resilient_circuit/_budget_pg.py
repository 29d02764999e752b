"""Retry budgets in PostgreSQL: one ``rc_budget_deposit``/``rc_budget_withdraw`` call each.

The bucket arithmetic runs in the database (``sql/schema.sql``), so every process
sharing the database shares each budget. A store holds one autocommit connection of
its own, opened on first use: withdrawals are rare (only when a retry is about to
happen) and deposits arrive in batches, so a pool would only add connections.
"""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "PostgreSQL retry budgets need psycopg 3: pip install 'resilient_circuit[postgres]'"
    ) from exc

from resilient_circuit._dsn import Dsn, redact
from resilient_circuit._machine import as_timedelta
from resilient_circuit.retry_budget import (
    BudgetUnavailable,
    Settlement,
    SettlingStore,
)
from resilient_circuit.storage.postgres.connection import local_timeouts, setup_session

__all__ = ("PostgresBudgetStore",)

# A connection inherited through fork() belongs to the parent: closing it in the child
# would end the parent's session, so the child only forgets it (and keeps it here, so
# that garbage collection does not close it either).
_inherited: list[Any] = []


class PostgresBudgetStore(SettlingStore):
    """Budgets in the ``rc_retry_budgets`` table of ``schema``, reached through ``dsn``."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        connect_timeout: timedelta = timedelta(seconds=5),
        statement_timeout: timedelta = timedelta(seconds=2),
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"`dsn` must be a str, got {type(dsn).__name__}")
        # Parsed once, the password kept apart and masked in every message.
        self._dsn = Dsn(dsn, "dsn")
        if not isinstance(schema, str) or not schema:
            raise ValueError("`schema` must be a non-empty str")
        connect_timeout = as_timedelta(connect_timeout, "connect_timeout")
        statement_timeout = as_timedelta(statement_timeout, "statement_timeout")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("statement_timeout", statement_timeout),
        ):
            if value < timedelta(milliseconds=1):
                raise ValueError(f"`{name}` must be at least 1 ms, got {value}")
        self.schema = schema
        self._connect_timeout = max(1, round(connect_timeout.total_seconds()))
        self._timeout_ms = statement_timeout // timedelta(milliseconds=1)
        self._direct = True
        qualified = sql.Identifier(schema)
        self._withdraw = sql.SQL("SELECT {}.rc_budget_withdraw(%s, %s, %s, %s, %s)").format(
            qualified
        )
        self._deposit = sql.SQL("SELECT {}.rc_budget_deposit(%s, %s, %s, %s, %s)").format(qualified)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        # Never the DSN: it may hold a password.
        return f"PostgresBudgetStore(schema={self.schema!r})"

    def _settle(self, step: Settlement) -> bool:
        """One round trip."""
        key = (step.name, step.namespace)
        if step.withdraw:
            statement = self._withdraw
            params: tuple[object, ...] = (
                *key,
                step.min_per_second,
                step.first_attempts,
                step.ratio,
            )
        else:
            statement = self._deposit
            params = (*key, step.first_attempts, step.ratio, step.min_per_second)
        with self._lock:
            try:
                conn = self._connection()
                # Direct, the timeouts are the session's; behind a pooler they are set
                # for this round trip's own transaction (its results arrive at the end).
                scope = nullcontext() if self._direct else local_timeouts(conn, self._timeout_ms)
                with scope:
                    cur = conn.execute(statement, params)
                row = cur.fetchone()
                return step.withdraw and bool(row and row[0])
            except psycopg.Error as exc:
                self._discard()
                raise BudgetUnavailable(redact(_one_line(exc), self._dsn.password or "")) from None

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self._lock:
            self._discard()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._pid != os.getpid():
            if self._conn is not None:
                _inherited.append(self._conn)
            self._conn, self._pid = None, os.getpid()
        conn = self._conn
        if conn is None or conn.closed:
            # No server-side prepared statements: PgBouncer before 1.21 refuses them.
            conn = psycopg.connect(
                self._dsn.conninfo,
                **self._dsn.connect_kwargs(),
                autocommit=True,
                connect_timeout=self._connect_timeout,
                prepare_threshold=None,
            )
            # Set after connecting, PgBouncer refusing the `options` startup parameter,
            # and as the breaker store does: session settings only on a connection that
            # reaches PostgreSQL directly (behind a pooler they would stick to a server
            # connection other clients use next), else per round trip (see _settle).
            self._direct = setup_session(conn, self._timeout_ms)
            self._conn = conn
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
