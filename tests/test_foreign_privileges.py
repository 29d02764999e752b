"""Privileges other roles hold on owner-only objects: pg-setup takes them back, pg-check says so.

A role's ``ALTER DEFAULT PRIVILEGES`` applies to the tables and functions it creates, the
breaker's included: a reporting role given SELECT on future tables would read the channel
secret and every namespace's rows. Every role is created by the test and logs in itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from resilient_circuit import _installer
from resilient_circuit.cli import main
from resilient_circuit.cli.connect import connect

if TYPE_CHECKING:
    from tests.conftest import PgRole

# What a role granted no namespace must not be able to do once pg-setup has run.
_OWNER_ONLY = (
    "SELECT secret FROM rc_notify_secret",
    "SELECT namespace, resource_key FROM rc_circuit_breakers",
    "SELECT * FROM rc_namespace_grants",
    "SELECT * FROM rc_retry_budgets",
    "SELECT rc_notify_channel('a')",
)


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _refused(dsn: str) -> list[str]:
    """Which of ``_OWNER_ONLY`` the role logging in with ``dsn`` is refused."""
    refused = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for query in _OWNER_ONLY:
            try:
                conn.execute(query)
            except psycopg.errors.InsufficientPrivilege:
                refused.append(query)
    return refused


def _grant_behind_the_installers_back(dsn: str, reporter: str) -> None:
    """What default privileges would have given ``reporter``, granted on an existing install."""
    with connect(dsn) as conn:
        conn.autocommit = True
        to = sql.Identifier(reporter)
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(to))
        conn.execute(
            sql.SQL(
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {} WITH GRANT OPTION"
            ).format(to)
        )


def test_a_fresh_install_ignores_the_installers_default_privileges(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Default privileges granting SELECT and EXECUTE to a reporter give it none of ours."""
    reporter, app = pg_role(), pg_role()
    with connect(pg_empty_dsn) as conn:
        conn.autocommit = True
        to = sql.Identifier(reporter)
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {}").format(to))
        conn.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO {}").format(to)
        )
    result = _cli("pg-setup", "--yes", "--dsn", pg_empty_dsn, "--app-role", app, "--namespace", "a")
    assert result.exit_code == 0, result.output

    assert _refused(reporter.dsn(pg_empty_dsn)) == list(_OWNER_ONLY)
    with psycopg.connect(app.dsn(pg_empty_dsn), autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_record('k', false, 'a')")
        assert conn.execute("SELECT rc_channel('a')").fetchone() is not None
    with connect(pg_empty_dsn) as conn:
        assert _installer.foreign_privileges(conn, "public") == []


def test_pg_setup_revokes_them_from_an_existing_install_then_has_nothing_to_do(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A second pg-setup is no no-op while others hold privileges: it revokes, then is one."""
    reporter = pg_role()
    _grant_behind_the_installers_back(pg_dsn, reporter)
    assert _refused(reporter.dsn(pg_dsn)) == []

    dry = _cli("pg-setup", "--dry-run", "--dsn", pg_dsn)
    assert dry.exit_code == 0, dry.output
    assert f"REVOKE ALL ON TABLE public.rc_notify_secret FROM {reporter} CASCADE" in dry.stdout
    assert f"REVOKE ALL ON FUNCTION public.rc_notify_channel(text) FROM {reporter}" in dry.stdout
    assert _refused(reporter.dsn(pg_dsn)) == []

    fixed = _cli("pg-setup", "--yes", "--dsn", pg_dsn)
    assert fixed.exit_code == 0, fixed.output
    assert "Revoked privileges" in fixed.stdout
    assert _refused(reporter.dsn(pg_dsn)) == list(_OWNER_ONLY)
    with psycopg.connect(reporter.dsn(pg_dsn), autocommit=True) as conn:
        # The status view is granted on purpose, and shows only the namespaces granted.
        assert conn.execute("SELECT count(*) FROM rc_circuit_breaker_status").fetchone() == (0,)

    again = _cli("pg-setup", "--yes", "--dsn", pg_dsn)
    assert again.exit_code == 0, again.output
    assert "Already up to date" in again.stdout


@pytest.mark.parametrize("who", ["PUBLIC", "reporter"])
def test_pg_check_names_them_and_pg_setup_as_the_fix(
    pg_dsn: str, pg_role: Callable[[], PgRole], who: str
) -> None:
    """pg-check exits 1 naming the grantee and the object, and 0 once pg-setup ran."""
    grantee = "PUBLIC" if who == "PUBLIC" else str(pg_role())
    with connect(pg_dsn) as conn:
        conn.autocommit = True
        to = sql.SQL("PUBLIC") if who == "PUBLIC" else sql.Identifier(grantee)
        conn.execute(sql.SQL("GRANT SELECT ON rc_notify_secret TO {}").format(to))

    found = _cli("pg-check", "--dsn", pg_dsn)
    assert found.exit_code == 1, found.output
    assert "rc_notify_secret" in found.output
    assert grantee in found.output
    assert "pg-setup" in found.output

    assert _cli("pg-setup", "--yes", "--dsn", pg_dsn).exit_code == 0
    assert _cli("pg-check", "--dsn", pg_dsn).exit_code == 0


def test_the_app_roles_grants_survive_a_run_that_revokes(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Revoking what others hold leaves the app role its functions and the status view."""
    app, reporter = pg_role(), pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=app, namespaces=["a"])
    _grant_behind_the_installers_back(pg_dsn, reporter)
    with connect(pg_dsn) as conn:
        ran: list[Any] = _installer.install(conn)
    assert any("REVOKE ALL ON TABLE" in statement for statement in ran)
    with psycopg.connect(app.dsn(pg_dsn), autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_record('k', false, 'a')")
        assert conn.execute("SELECT count(*) FROM rc_circuit_breaker_status").fetchone() == (1,)
    assert _cli("pg-check", "--dsn", app.dsn(pg_dsn), "--namespace", "a").exit_code == 0
