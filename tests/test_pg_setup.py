"""``resilient-circuit-cli pg-setup`` against a real PostgreSQL, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resilient_circuit import _installer, _settings, cli
from resilient_circuit.cli import main
from tests.test_schema_equivalence import install_by_replaying

if TYPE_CHECKING:
    from tests.conftest import PgRole

REPO = Path(__file__).resolve().parent.parent
RC_ENV = (
    "RC_DB_DSN",
    "RC_DB_HOST",
    "RC_DB_PORT",
    "RC_DB_NAME",
    "RC_DB_USER",
    "RC_DB_PASSWORD",
    "RC_DB_SCHEMA",
)
PUBLIC_FUNCTIONS = {
    "rc_try_acquire",
    "rc_record",
    "rc_configure",
    "rc_force",
    "rc_reset",
    "rc_status",
}


# -------------------------------------------------------------------------- utilities


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run from an empty directory with no RC_DB_* variables and .env not yet read."""
    for name in RC_ENV:
        # setenv first so that monkeypatch restores "unset" even for variables
        # that python-dotenv adds to os.environ during the test.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(_settings, "_dotenv_loaded", False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pg_setup(*args: str) -> Result:
    """Invoke ``pg-setup`` in-process, the way a shell would."""
    return CliRunner().invoke(main, ["pg-setup", *args])


def error_line(result: Result) -> str:
    """The failure message, checked to be exactly one line and no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def cli_command() -> list[str]:
    """The installed entry point when it belongs to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("resilient-circuit-cli")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "resilient_circuit.cli"]


def run_subprocess(
    args: Sequence[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as its own process, with only the given RC_* variables set."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    full_env.update(env)
    # Source checkouts are not necessarily installed; make the package importable.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [*cli_command(), *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def user_objects(dsn: str) -> list[tuple[str, str, str]]:
    """Every schema, relation and function outside the system schemas."""
    with connect(dsn) as conn:
        rows = conn.execute(
            """
            SELECT 'schema', nspname, '' FROM pg_namespace
            WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
            UNION ALL
            SELECT 'relation', n.nspname, c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
            UNION ALL
            SELECT 'function', n.nspname, p.oid::regprocedure::text FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
            ORDER BY 1, 2, 3
            """
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def rc_functions(dsn: str, schema: str) -> set[str]:
    """Names of the rc_* functions in ``schema``."""
    with connect(dsn) as conn:
        rows = conn.execute(
            """
            SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = %s AND p.proname LIKE 'rc\\_%%'
            """,
            [schema],
        ).fetchall()
    return {name for (name,) in rows}


def tracked_versions(dsn: str, schema: str = "public") -> list[int]:
    """Versions recorded in the tracking table."""
    with connect(dsn) as conn:
        table = sql.Identifier(schema, _installer.TRACKING_TABLE)
        rows = conn.execute(sql.SQL("SELECT version FROM {} ORDER BY 1").format(table)).fetchall()
    return [version for (version,) in rows]


def all_versions() -> list[int]:
    """Every migration version shipped with the package."""
    return [m.version for m in _installer.load_migrations()]


def call(conn: psycopg.Connection[Any], query: str, *params: Any) -> tuple[Any, ...]:
    """The single row a breaker function returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


# ---------------------------------------------------------------------- installing


def test_fresh_install(pg_empty_dsn: str) -> None:
    """An empty database gets the table, the functions and every version recorded."""
    result = pg_setup("--yes", "--dsn", pg_empty_dsn)
    assert result.exit_code == 0, result.output
    assert "Fresh install" in result.stdout
    assert rc_functions(pg_empty_dsn, "public") >= PUBLIC_FUNCTIONS
    assert tracked_versions(pg_empty_dsn) == all_versions()
    with connect(pg_empty_dsn) as conn:
        permitted, state, generation, retry_after = call(
            conn, "SELECT * FROM rc_try_acquire(%s)", "payments"
        )
        assert (permitted, state, generation, retry_after) == (True, "CLOSED", 0, None)
        state, _ = call(conn, "SELECT * FROM rc_record(%s, false)", "payments")
        assert state == "OPEN"  # never configured: 0.4.5's default failure limit 1/1
        assert call(conn, "SELECT state FROM rc_circuit_breakers")[0] == "OPEN"


def test_second_run_changes_nothing(pg_empty_dsn: str) -> None:
    """Running pg-setup again reports up to date and keeps objects and breaker rows."""
    assert pg_setup("--yes", "--dsn", pg_empty_dsn).exit_code == 0
    with connect(pg_empty_dsn) as conn:
        conn.execute("SELECT * FROM rc_record('payments', false)")
    before = user_objects(pg_empty_dsn)

    result = pg_setup("--yes", "--dsn", pg_empty_dsn)
    assert result.exit_code == 0, result.output
    assert "Already up to date" in result.stdout
    assert user_objects(pg_empty_dsn) == before
    assert tracked_versions(pg_empty_dsn) == all_versions()
    with connect(pg_empty_dsn) as conn:
        assert call(conn, "SELECT state, failure_count FROM rc_circuit_breakers") == ("OPEN", 1)
        assert _installer.plan(conn, "public") == []
        assert _installer.install(conn) == []


def test_dry_run_prints_the_sql_and_changes_nothing(pg_empty_dsn: str) -> None:
    """--dry-run prints a complete SQL script, changes nothing, and the script really installs."""
    before = user_objects(pg_empty_dsn)
    result = pg_setup("--dry-run", "--dsn", pg_empty_dsn, "--schema", "rc_dry")
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert "nothing has been changed" in script
    assert "BEGIN;" in script
    assert script.rstrip().endswith("COMMIT;")
    assert 'CREATE SCHEMA IF NOT EXISTS "rc_dry"' in script
    assert "rc_circuit_breakers" in script
    assert "rc_try_acquire" in script
    assert user_objects(pg_empty_dsn) == before

    # The printed script is exactly what a real run does: running it by hand
    # leaves nothing for pg-setup to do.
    with connect(pg_empty_dsn) as conn:
        conn.execute(script.encode())
        assert _installer.plan(conn, "rc_dry") == []
    assert tracked_versions(pg_empty_dsn, "rc_dry") == all_versions()

    again = pg_setup("--dry-run", "--dsn", pg_empty_dsn, "--schema", "rc_dry")
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.stdout


def test_schema_option_installs_into_that_schema(pg_empty_dsn: str) -> None:
    """--schema installs into a schema needing quotes; its functions work from any search_path."""
    schema = "Breakers Here"
    result = pg_setup("--yes", "--dsn", pg_empty_dsn, "--schema", schema)
    assert result.exit_code == 0, result.output
    assert rc_functions(pg_empty_dsn, schema) >= PUBLIC_FUNCTIONS
    assert rc_functions(pg_empty_dsn, "public") == set()
    assert tracked_versions(pg_empty_dsn, schema) == all_versions()
    with connect(pg_empty_dsn) as conn:
        # The caller's search_path does not contain the schema: the functions
        # must find their own table through their pinned search_path.
        conn.execute("SET search_path TO public")
        state, generation = call(
            conn, 'SELECT * FROM "Breakers Here".rc_record(%s, false, %s)', "svc", "ns"
        )
        assert (state, generation) == ("OPEN", 1)
        permitted, state, _, _ = call(
            conn, 'SELECT * FROM "Breakers Here".rc_try_acquire(%s, %s)', "svc", "ns"
        )
        assert permitted is True
        assert state == "HALF_OPEN"
        rows = conn.execute(
            'SELECT namespace, resource_key, state FROM "Breakers Here".rc_circuit_breakers'
        ).fetchall()
        assert rows == [("ns", "svc", "HALF_OPEN")]


def test_installs_serialise_on_the_advisory_lock(pg_empty_dsn: str) -> None:
    """Two installers started together take turns: one installs, the other finds it done."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def installer() -> None:
        try:
            with connect(pg_empty_dsn) as conn:
                results.append(_installer.install(conn))
        except BaseException as exc:
            errors.append(exc)

    with (
        connect(pg_empty_dsn) as holder,
        connect(pg_empty_dsn) as observer,
        holder.transaction(),
    ):
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [_installer.LOCK_KEY])
        threads = [threading.Thread(target=installer) for _ in range(2)]
        for thread in threads:
            thread.start()
        # Release the lock only once both installers are queued behind it.
        deadline = time.monotonic() + 30
        waiting = 0
        while waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            waiting = call(
                observer,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())",
            )[0]
        assert waiting == 2
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(len(statements) > 0 for statements in results) == [False, True]
    assert tracked_versions(pg_empty_dsn) == all_versions()


# ----------------------------------------------------------------- upgrading 0.4.5


def create_0_4_5_table(dsn: str) -> None:
    """Build the table exactly as 0.4.5's pg-setup did, holding breakers in every state."""
    seed = _installer.load_migrations()[0]
    assert seed.version == 1
    with connect(dsn) as conn, conn.transaction():
        conn.execute(sql.SQL(seed.sql))
        rows = [
            ("svc-closed", "default", "CLOSED", 1, "NULL", [True, True, False]),
            ("svc-open", "default", "OPEN", 3, "now() + interval '1 hour'", [False, False, False]),
            ("svc-cooled", "default", "OPEN", 2, "now() - interval '1 minute'", [True, False]),
            ("svc-half", "other-ns", "HALF_OPEN", 0, "NULL", [True]),
            ("svc-empty", "default", "CLOSED", 0, "NULL", []),
        ]
        for key, namespace, state, failures, open_until, log in rows:
            conn.execute(
                sql.SQL(
                    "INSERT INTO rc_circuit_breakers (resource_key, namespace, state, "
                    "failure_count, open_until, execution_log, created_at) "
                    "VALUES (%s, %s, %s, %s, {}, %s::jsonb, '2024-01-02 03:04:05+00')"
                ).format(sql.SQL(open_until)),
                [key, namespace, state, failures, json.dumps(log)],
            )


def test_upgrade_from_0_4_5_keeps_rows(pg_empty_dsn: str) -> None:
    """A 0.4.5 table is upgraded in place: rows, states and windows kept, functions work on them."""
    create_0_4_5_table(pg_empty_dsn)
    with connect(pg_empty_dsn) as conn:
        before = conn.execute(
            "SELECT resource_key, namespace, state, failure_count, open_until, created_at, "
            "execution_log FROM rc_circuit_breakers ORDER BY 1, 2"
        ).fetchall()
        assert _installer.applied_versions(conn) == [1]

    dry = pg_setup("--dry-run", "--dsn", pg_empty_dsn)
    assert dry.exit_code == 0, dry.output
    assert "INSERT INTO" in dry.stdout
    assert "(1, 'seed_0_4_5')" in dry.stdout
    with connect(pg_empty_dsn) as conn:
        assert call(
            conn,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'rc_circuit_breakers'::regclass AND attname = 'execution_log'",
        ) == ("jsonb",)

    result = pg_setup("--yes", "--dsn", pg_empty_dsn)
    assert result.exit_code == 0, result.output
    assert "Upgraded from 0.4.5" in result.stdout
    assert tracked_versions(pg_empty_dsn) == all_versions()

    with connect(pg_empty_dsn) as conn:
        after = conn.execute(
            "SELECT resource_key, namespace, state, failure_count, open_until, created_at, "
            "execution_log FROM rc_circuit_breakers ORDER BY 1, 2"
        ).fetchall()
        assert [row[:6] for row in after] == [row[:6] for row in before]
        # jsonb [true, false] became boolean[] {t,f}, order (newest last) kept; a
        # HALF_OPEN row starts its trial window afresh (0.4.5 had no separate one).
        assert [row[6] for row in after] == [
            [] if row[2] == "HALF_OPEN" else row[6] for row in before
        ]
        assert call(
            conn,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'rc_circuit_breakers'::regclass AND attname = 'execution_log'",
        ) == ("boolean[]",)

        # The seed's documented monitoring query still works.
        conn.execute(
            "SELECT resource_key, state, failure_count, open_until, updated_at "
            "FROM rc_circuit_breakers ORDER BY updated_at DESC"
        ).fetchall()

        assert call(conn, "SELECT * FROM rc_record('svc-closed', true)")[0] == "CLOSED"
        assert call(
            conn, "SELECT failure_count FROM rc_circuit_breakers WHERE resource_key = 'svc-closed'"
        ) == (0,)
        assert call(conn, "SELECT * FROM rc_record('svc-closed', false)")[0] == "OPEN"

        permitted, state, _, retry_after = call(conn, "SELECT * FROM rc_try_acquire('svc-open')")
        assert (permitted, state) == (False, "OPEN")
        assert retry_after.total_seconds() > 3000

        permitted, state, _, retry_after = call(conn, "SELECT * FROM rc_try_acquire('svc-cooled')")
        assert (permitted, state, retry_after) == (True, "HALF_OPEN", None)

        state, _ = call(conn, "SELECT * FROM rc_record('svc-half', true, 'other-ns')")
        assert state == "CLOSED"

        assert call(conn, "SELECT count(*) FROM rc_circuit_breaker_status") == (5,)

    again = pg_setup("--yes", "--dsn", pg_empty_dsn)
    assert again.exit_code == 0
    assert "Already up to date" in again.stdout


# -------------------------------------------------------------------- the app role


def test_app_role_gets_the_functions_and_the_view_only(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """--app-role grants the functions and the view, and takes back earlier table grants."""
    role = pg_role()
    with connect(pg_dsn) as conn:
        # Grants an operator may have made for 0.4.5, which used the table directly.
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON rc_circuit_breakers TO {}").format(
                sql.Identifier(role)
            )
        )
    result = pg_setup("--yes", "--dsn", pg_dsn, "--app-role", role)
    assert result.exit_code == 0, result.output
    assert "Granted role" in result.stdout

    with connect(pg_dsn) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        state, generation = call(conn, "SELECT * FROM rc_record(%s, false)", "payments")
        assert (state, generation) == ("OPEN", 1)
        assert call(conn, "SELECT permitted FROM rc_try_acquire('payments')") == (True,)
        assert call(conn, "SELECT * FROM rc_force('payments', 'CLOSED')")[0] == "CLOSED"
        rows = conn.execute("SELECT * FROM rc_circuit_breaker_status").fetchall()
        assert len(rows) == 1
        assert len(conn.execute("SELECT * FROM rc_status('payments')").fetchall()) == 1
        for statement in (
            "SELECT * FROM rc_circuit_breakers",
            "UPDATE rc_circuit_breakers SET state = 'OPEN'",
            "DELETE FROM rc_circuit_breakers",
            "INSERT INTO rc_circuit_breakers (resource_key, state) VALUES ('x', 'OPEN')",
            "SELECT * FROM rc_schema_migrations",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
        conn.execute("RESET ROLE")

        # Only the public rc_* functions: the explicit-time variants let a caller
        # pick "now", so they stay with the owner.
        privileges = conn.execute(
            """
            SELECT p.proname, has_function_privilege(%s, p.oid, 'EXECUTE')
            FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'rc\\_%%'
              AND p.prorettype <> 'trigger'::regtype
            """,
            [role],
        ).fetchall()
        allowed = {name for name, ok in privileges if ok}
        assert allowed >= PUBLIC_FUNCTIONS
        assert not {name for name in allowed if name.endswith("_at")}
        assert call(
            conn,
            "SELECT has_table_privilege(%s, 'rc_circuit_breakers', "
            "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
            role,
        ) == (False,)

    again = pg_setup("--yes", "--dsn", pg_dsn, "--app-role", role)
    assert again.exit_code == 0, again.output


def test_an_upgrade_blocked_by_a_users_view_names_it_and_changes_nothing(
    pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 15 replaces the status view: a view of the user's built on it stops the
    upgrade with a message naming that view and what to do, not a bare server error."""
    every = _installer.load_migrations()
    with monkeypatch.context() as older_package:
        older_package.setattr(_installer, "load_migrations", lambda: every[:14])
        install_by_replaying(pg_empty_dsn, "public")
    with connect(pg_empty_dsn) as conn:
        conn.execute("CREATE VIEW my_dashboard AS SELECT * FROM rc_circuit_breaker_status")
    result = pg_setup("--dsn", pg_empty_dsn, "--yes")
    assert result.exit_code != 0
    assert "0015_counter_domains.sql" in result.output
    assert "view my_dashboard depends on view rc_circuit_breaker_status" in result.output
    assert "Drop those objects, run pg-setup again" in result.output
    assert "Traceback" not in result.output
    assert tracked_versions(pg_empty_dsn) == list(range(1, 15))


def test_missing_app_role_fails_before_changing_anything(pg_empty_dsn: str) -> None:
    """An unknown --app-role exits 1 with one line and leaves the database empty."""
    before = user_objects(pg_empty_dsn)
    missing = f"rc_no_such_role_{uuid.uuid4().hex[:8]}"
    line = error_line(pg_setup("--yes", "--dsn", pg_empty_dsn, "--app-role", missing))
    assert missing in line
    assert "does not exist" in line
    assert user_objects(pg_empty_dsn) == before


def test_app_role_must_not_be_the_owner(pg_dsn: str) -> None:
    """Naming the owning (super)user as --app-role is refused, leaving its privileges intact."""
    with connect(pg_dsn) as conn:
        owner = call(conn, "SELECT current_user")[0]
    line = error_line(pg_setup("--yes", "--dsn", pg_dsn, "--app-role", owner))
    assert "separate, unprivileged role" in line
    with connect(pg_dsn) as conn:
        assert call(conn, "SELECT count(*) FROM rc_circuit_breakers") == (0,)


def test_dry_run_with_app_role_grants_like_a_real_run(
    pg_make_database: Callable[[], str], pg_role: Callable[[], PgRole]
) -> None:
    """The dry-run script for a fresh install with --app-role grants what a real run grants."""
    role = pg_role()
    by_script, by_command = pg_make_database(), pg_make_database()
    dry = pg_setup("--dry-run", "--dsn", by_script, "--app-role", role)
    assert dry.exit_code == 0, dry.output
    with connect(by_script) as conn:
        conn.execute(dry.stdout.encode())
    assert pg_setup("--yes", "--dsn", by_command, "--app-role", role).exit_code == 0

    def privileges(dsn: str) -> list[tuple[Any, ...]]:
        with connect(dsn) as conn:
            rows = conn.execute(
                """
                SELECT 'function', p.oid::regprocedure::text,
                       has_function_privilege(%(role)s, p.oid, 'EXECUTE')
                FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
                UNION ALL
                SELECT 'relation', c.relname, has_table_privilege(%(role)s, c.oid,
                       'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v')
                UNION ALL
                SELECT 'schema', 'public', has_schema_privilege(%(role)s, 'public', 'USAGE')
                ORDER BY 1, 2
                """,
                {"role": role},
            ).fetchall()
        return [tuple(row) for row in rows]

    granted = privileges(by_command)
    assert ("relation", "rc_circuit_breaker_status", True) in granted
    assert privileges(by_script) == granted


def test_interactive_confirmation(pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a terminal pg-setup asks first: "n" changes nothing, "y" installs."""
    monkeypatch.setattr(cli, "_stdin_is_interactive", lambda: True)
    before = user_objects(pg_empty_dsn)
    declined = CliRunner().invoke(main, ["pg-setup", "--dsn", pg_empty_dsn], input="n\n")
    assert declined.exit_code == 1
    assert "Install the breaker table and functions in schema 'public'" in declined.output
    assert "aborted; nothing was changed" in declined.stderr
    assert user_objects(pg_empty_dsn) == before

    accepted = CliRunner().invoke(main, ["pg-setup", "--dsn", pg_empty_dsn], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert tracked_versions(pg_empty_dsn) == all_versions()


# ----------------------------------------------------------- configuration sources


def test_rc_db_variables_from_dotenv(pg_empty_dsn: str, clean_env: Path) -> None:
    """RC_DB_* and RC_DB_SCHEMA are read from a .env file in the working directory."""
    params = conninfo_to_dict(pg_empty_dsn)
    lines = [
        f"RC_DB_HOST={params.get('host') or 'localhost'}",
        f"RC_DB_PORT={params.get('port') or 5432}",
        f"RC_DB_NAME={params['dbname']}",
        f"RC_DB_USER={params.get('user') or 'postgres'}",
        "RC_DB_SCHEMA=from_dotenv",
    ]
    if params.get("password"):
        lines.append(f"RC_DB_PASSWORD={params['password']}")
    (clean_env / ".env").write_text("\n".join(lines) + "\n")

    result = pg_setup("--yes")
    assert result.exit_code == 0, result.output
    assert rc_functions(pg_empty_dsn, "from_dotenv") >= PUBLIC_FUNCTIONS


def test_entry_point_reads_rc_db_dsn_and_env_beats_dotenv(
    pg_empty_dsn: str, tmp_path: Path
) -> None:
    """The real command, as a process, uses RC_DB_DSN; the environment wins over .env."""
    (tmp_path / ".env").write_text(
        "RC_DB_DSN=postgresql://nobody@127.0.0.1:1/nowhere\nRC_DB_SCHEMA=from_dotenv\n"
    )
    env = {"RC_DB_DSN": pg_empty_dsn, "RC_DB_SCHEMA": "from_env"}
    done = run_subprocess(["pg-setup", "--yes"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "Fresh install" in done.stdout
    assert rc_functions(pg_empty_dsn, "from_env") >= PUBLIC_FUNCTIONS
    assert rc_functions(pg_empty_dsn, "from_dotenv") == set()

    refused = run_subprocess(["pg-setup"], tmp_path, env | {"RC_DB_SCHEMA": "other"})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "Error: refusing to change the database without confirmation "
        "(stdin is not a terminal); pass --yes"
    ]
    assert rc_functions(pg_empty_dsn, "other") == set()


# --------------------------------------------------------------------------- errors


def test_no_database_configured(clean_env: Path) -> None:
    """Without --dsn, RC_DB_DSN or RC_DB_HOST the command says so in one line."""
    line = error_line(pg_setup("--yes"))
    assert "no database configured" in line
    assert "RC_DB_DSN" in line


def test_missing_database(pg_admin_dsn: str) -> None:
    """A database that does not exist is named, with the createdb command to fix it."""
    name = f"rc_missing_{uuid.uuid4().hex[:8]}"
    line = error_line(pg_setup("--yes", "--dsn", make_conninfo(pg_admin_dsn, dbname=name)))
    assert f"database {name!r}" in line
    assert "does not exist" in line
    assert "createdb" in line
    assert name in line.split("createdb", 1)[1]


def test_unreachable_server() -> None:
    """Nothing listening on the port gives a one-line 'cannot reach' naming host and port."""
    started = time.monotonic()
    line = error_line(
        pg_setup("--yes", "--dsn", "host=127.0.0.1 port=1 dbname=x user=u connect_timeout=3")
    )
    assert "cannot reach PostgreSQL" in line
    assert "127.0.0.1:1" in line
    assert time.monotonic() - started < 30


def test_unreachable_server_in_a_real_process(tmp_path: Path) -> None:
    """The installed command also fails with one line and exit status 1, no traceback."""
    done = run_subprocess(
        ["pg-setup", "--yes"],
        tmp_path,
        {"RC_DB_DSN": "postgresql://u@127.0.0.1:1/x?connect_timeout=3"},
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: cannot reach PostgreSQL"), done.stderr


def test_insufficient_privilege(pg_empty_dsn: str, pg_role: Callable[[], PgRole]) -> None:
    """A role that may not create the schema gets one line saying permission was denied."""
    role = pg_role()
    line = error_line(pg_setup("--yes", "--dsn", role.dsn(pg_empty_dsn), "--schema", "rc_denied"))
    assert "permission denied" in line
    assert role in line
    assert role.password not in line
