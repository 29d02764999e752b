"""A connection the store lends to the application (``pool()``, ``_get_connection``) comes
back to the store's own calls with none of the session settings the application made."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage
from tests.conftest import PgRole

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(
        pg_dsn, namespace="lent", max_connections=1, connect_timeout=5.0, statement_timeout=1.5
    )
    yield made
    made.close()


def _session(store: PostgresStorage) -> tuple[object, ...]:
    with store._get_connection() as conn:
        row = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_user::text, (SELECT count(*) FROM pg_prepared_statements"
            " WHERE name LIKE 'app%')"
        ).fetchone()
        assert row is not None
        return (*row, conn.autocommit, conn.row_factory is tuple_row)


def test_the_applications_settings_do_not_reach_the_stores_calls(
    store: PostgresStorage, pg_role: Callable[[], PgRole]
) -> None:
    """No timeouts, another role, a prepared statement, no autocommit and another row
    factory on a lent connection: the store's next round trip on it (the only one, at
    max_connections=1) still has its own timeouts, role and attributes."""
    other = pg_role()
    call = CircuitProtectorPolicy(resource_key="lent", storage=store)(lambda: "ok")
    assert call() == "ok"
    own = _session(store)
    assert own[:2] == ("1500ms", "1500ms")
    with store._get_connection() as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET lock_timeout = 0")
        conn.execute("PREPARE app_statement AS SELECT 1")
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(other)))
        conn.autocommit = False
        conn.row_factory = dict_row
    assert call() == "ok"
    assert _session(store) == own


def test_a_lent_connection_left_in_a_transaction_records_the_stores_outcomes(
    store: PostgresStorage, pg_dsn: str
) -> None:
    """The application turns autocommit off and gives the connection back: the
    store's outcomes recorded on it are committed, not left in a transaction."""
    policy = CircuitProtectorPolicy(resource_key="lent_tx", storage=store)
    call = policy(lambda: "ok")
    assert call() == "ok"
    with store._get_connection() as conn:
        conn.autocommit = False
    for _ in range(3):
        assert call() == "ok"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT successes FROM rc_circuit_breakers"
            " WHERE namespace = 'lent' AND resource_key = 'lent_tx'"
        ).fetchone()
    assert row == (4,)


def test_a_query_psycopg_prepared_runs_again_after_the_connection_came_back(
    store: PostgresStorage,
) -> None:
    """psycopg prepares a query run often on a lent connection; once the session was reset,
    running it again on that connection prepares it anew instead of failing."""
    query = "SELECT current_setting('statement_timeout')"
    for _ in range(10):  # past psycopg's prepare threshold, on the one connection
        with store._get_connection() as conn:
            assert conn.execute(query).fetchone() == ("1500ms",)
