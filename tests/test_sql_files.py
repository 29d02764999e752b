"""The shipped SQL files: how they are written, and the 0.4.5 upgrade keeping its rows.

schema.sql is the full current state and each migration a delta that redefines only
what it changes; that a fresh install and a replay of every migration give the same
database is proved on the catalogs by tests/test_schema_equivalence.py.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from resilient_circuit import _installer
from resilient_circuit.cli.connect import connect

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def _schema_sql() -> str:
    return (SQL_DIR / "schema.sql").read_text(encoding="utf-8")


def _code(text: str) -> str:
    """The SQL without its -- comments (the files hold no '--' inside string literals)."""
    return re.sub(r"--[^\n]*", "", text)


OURS = "@extschema@."


def test_every_function_is_created_pinned_and_revoked_from_public() -> None:
    """Each rc_* function pins search_path to pg_catalog, pg_temp; the final REVOKE lists all."""
    code = _code(_schema_sql())
    created = re.findall(r"CREATE OR REPLACE FUNCTION @extschema@\.(rc_\w+)\(", code)
    assert len(created) == len(set(created)), "a function is defined twice"
    definitions = re.split(r"CREATE OR REPLACE FUNCTION ", code)[1:]
    assert len(definitions) == len(created), "a function is created without its schema"
    for definition in definitions:
        header = definition[: definition.index("AS $$")]
        assert "SET search_path = pg_catalog, pg_temp\n" in header, definition.split("(")[0]
    assert re.search(r"FROM PUBLIC;\s*\Z", code), "schema.sql must end with REVOKE ... FROM PUBLIC"
    # One REVOKE per section of the file (the retry budget's closes its own).
    revokes = re.findall(r"REVOKE EXECUTE ON FUNCTION(.*?)FROM PUBLIC;", code, re.S)
    revoked = [name for body in revokes for name in re.findall(r"@extschema@\.(rc_\w+)\(", body)]
    assert sorted(revoked) == sorted(created)


def test_every_reference_to_our_objects_names_the_schema() -> None:
    """Outside comments and string literals, each of our names is written @extschema@.name."""
    text = _schema_sql()
    ours = set(
        re.findall(r"CREATE (?:OR REPLACE )?(?:FUNCTION|TABLE|VIEW) @extschema@\.(\w+)", text)
    )
    assert {"rc_circuit_breakers", "rc_namespace_grants", "rc_circuit_breaker_status"} <= ours
    newest = _installer.load_migrations()[-1]
    for name, body in [("schema.sql", text), (newest.filename, newest.sql)]:
        code = re.sub(r"'(?:[^']|'')*'", "''", _code(body))
        for match in re.finditer(r"(?<![\w.])(" + "|".join(ours) + r")\b", code):
            before = code[max(0, match.start() - len(OURS)) : match.start()]
            assert before == OURS, (
                f"{name}: unqualified {match[1]} at {code[match.start() - 80 : match.end()]!r}"
            )


def test_sql_files_name_no_schema() -> None:
    """No schema is spelled out: the installer's @extschema@ or search_path decides."""
    for path in [SQL_DIR / "schema.sql", *sorted((SQL_DIR / "migrations").glob("*.sql"))]:
        code = _code(path.read_text(encoding="utf-8"))
        assert not re.search(r"\bpublic\.", code, re.I), path.name
        assert not re.search(r"\bSCHEMA\b|\bsearch_path\s*TO", code, re.I), path.name
        pins = re.findall(r"\bsearch_path\s*=\s*([^\n;]*)", code, re.I)
        assert set(pins) <= {"pg_catalog, pg_temp"}, path.name


def test_every_table_constraint_is_named() -> None:
    """Explicit constraint names let a fresh install and an upgraded one agree on them."""
    code = _code(_schema_sql())
    tables = re.findall(r"CREATE TABLE @extschema@\.(\w+) \((.*?)\n\);", code, re.S)
    assert [name for name, _ in tables] == [
        "rc_circuit_breakers",
        "rc_namespace_grants",
        "rc_notify_secret",
        "rc_retry_budgets",
    ]
    for name, table in tables:
        checks = len(re.findall(r"\bCHECK\b", table))
        assert checks == len(re.findall(r"CONSTRAINT \w+\s+CHECK\b", table)), name
        assert re.search(rf"CONSTRAINT {name}_pkey\s+PRIMARY KEY", table), name


# ------------------------------------------------------------------- upgrading 0.4.5 data

SEED_ROWS = [
    # key, namespace, state, failure_count, open_until (from now), execution_log (jsonb)
    ("closed", "default", "CLOSED", 1, None, "[true, true, false]"),
    ("tripped", "default", "OPEN", 3, timedelta(hours=1), "[false, false, false]"),
    ("cooled", "shop", "OPEN", 2, timedelta(hours=-1), "[true, false]"),
    ("probing", "default", "HALF_OPEN", 0, None, "[false, true]"),
    ("odd", "default", "CLOSED", 0, None, '[true, null, "x", 1, false]'),
    ("not_a_list", "default", "CLOSED", 0, None, '{"a": true}'),
    ("empty", "default", "CLOSED", 0, None, "[]"),
]


def _install_0_4_5(dsn: str) -> datetime:
    seed = _installer.load_migrations()[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(seed.sql)
        now: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        for key, namespace, state, failures, offset, log in SEED_ROWS:
            conn.execute(
                "INSERT INTO rc_circuit_breakers (resource_key, namespace, state, failure_count,"
                " open_until, execution_log) VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
                (key, namespace, state, failures, None if offset is None else now + offset, log),
            )
    return now


def test_upgrade_from_0_4_5_keeps_rows_and_states(pg_empty_dsn: str) -> None:
    """0002 converts each 0.4.5 row in place: state, failures, open_until and log survive."""
    now = _install_0_4_5(pg_empty_dsn)
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        before: dict[str, Any] = {
            key: (created, updated)
            for key, created, updated in conn.execute(
                "SELECT resource_key, created_at, updated_at FROM rc_circuit_breakers"
            )
        }
    with connect(pg_empty_dsn) as conn:
        assert [step.kind for step in _installer.plan(conn)][:2] == ["adopt", "migration"]
        _installer.install(conn)

    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        rows = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT resource_key, namespace, state, failure_count, open_until,"
                " execution_log, generation, permits, successes, failures, failure_limit_num,"
                " failure_limit_den, window_size, success_limit_num, success_limit_den,"
                " cooldown, half_open_timeout, created_at, updated_at FROM rc_circuit_breakers"
            )
        }
        defaults = (0, [], 0, 0, 1, 1, 1, None, None, timedelta(0), timedelta(seconds=10))
        expected = {
            "closed": ("default", "CLOSED", 1, None, [True, True, False]),
            "tripped": ("default", "OPEN", 3, now + timedelta(hours=1), [False, False, False]),
            "cooled": ("shop", "OPEN", 2, now - timedelta(hours=1), [True, False]),
            # A half-open phase starts afresh: its window must leave room for a trial.
            "probing": ("default", "HALF_OPEN", 0, None, []),
            "odd": ("default", "CLOSED", 0, None, [True, False]),
            "not_a_list": ("default", "CLOSED", 0, None, []),
            "empty": ("default", "CLOSED", 0, None, []),
        }
        assert {key: row[:5] for key, row in rows.items()} == expected
        assert {key: row[5:16] for key, row in rows.items()} == dict.fromkeys(expected, defaults)
        assert {key: row[16:] for key, row in rows.items()} == before

        # The functions run the upgraded rows on: 0.4.5's breakers keep protecting.
        def acquire(key: str, namespace: str = "default") -> tuple[Any, ...]:
            return tuple(
                conn.execute(
                    "SELECT permitted, state, generation FROM rc_try_acquire(%s, %s)",
                    (key, namespace),
                ).fetchone()
                or ()
            )

        assert acquire("tripped") == (False, "OPEN", 0)
        assert acquire("cooled", "shop") == (True, "HALF_OPEN", 1)
        assert acquire("probing") == (True, "HALF_OPEN", 0)
        assert acquire("probing") == (False, "HALF_OPEN", 0)
        record = "SELECT * FROM rc_record(%s, false)"
        assert tuple(conn.execute(record, ["closed"]).fetchone() or ()) == ("OPEN", 1)
        # 0.4.5's updated_at trigger is gone; the ones left check the breaker's rules.
        assert conn.execute(
            "SELECT array_agg(tgname ORDER BY tgname) FROM pg_trigger"
            " WHERE tgrelid = 'rc_circuit_breakers'::regclass AND NOT tgisinternal"
        ).fetchone() == (["rc_circuit_breakers_check", "rc_circuit_breakers_check_buckets"],)


@pytest.mark.parametrize("schema", ["public", "rc"])
def test_schema_sql_installs_on_an_empty_schema(pg_empty_dsn: str, schema: str) -> None:
    """schema.sql, its schema filled in, runs on an empty schema and leaves a working breaker."""
    with psycopg.connect(pg_empty_dsn) as conn:
        if schema != "public":
            conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(_installer.render(_schema_sql(), schema, conn))
        conn.commit()
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT * FROM {schema}.rc_record('svc', false)").fetchone()
        assert row == ("OPEN", 1)
        stamp = conn.execute(f"SELECT updated_at FROM {schema}.rc_circuit_breakers").fetchone()
        assert stamp is not None
        assert stamp[0] > datetime.now(timezone.utc) - timedelta(minutes=5)
