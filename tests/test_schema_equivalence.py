"""schema.sql and the migrations must describe the same database.

A fresh install runs schema.sql; an upgraded one ran 0001 (0.4.5's table) and then
every later migration.  Users of both must get identical tables, functions, views
and privileges, or behaviour would depend on an installation's history.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from resilient_circuit import _installer
from resilient_circuit.cli.connect import connect

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "sql" / "migrations"


@dataclass(frozen=True)
class Kind:
    """One kind of catalog object: how to list it, and which leading fields name it."""

    query: str
    fields: tuple[str, ...]
    key: int = 1


# Each query lists one kind of object in schema %(schema)s, in a stable order, all
# rendered by the server as text so the comparison sees what pg_dump would.
CATALOG: dict[str, Kind] = {
    "relations": Kind(
        """
        SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text,
               obj_description(c.oid, 'pg_class')
        FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace
        ORDER BY 1
        """,
        ("name", "kind", "owner", "acl", "comment"),
    ),
    "columns": Kind(
        """
        SELECT c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               a.attcollation::regcollation::text, a.attacl::text,
               col_description(c.oid, a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1
        """,
        (
            "column",
            "type",
            "not null",
            "default",
            "identity",
            "generated",
            "collation",
            "acl",
            "comment",
        ),
    ),
    # Column order shows in SELECT * and in row types; an upgraded table that added
    # its columns in another order would differ there.
    "column order": Kind(
        """
        SELECT c.relname, string_agg(a.attname, ', ' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        GROUP BY c.relname
        ORDER BY 1
        """,
        ("relation", "columns"),
    ),
    "constraints": Kind(
        """
        SELECT conrelid::regclass::text || ' ' || conname, contype, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace
        ORDER BY 1
        """,
        ("constraint", "type", "definition"),
    ),
    "indexes": Kind(
        """
        SELECT c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = %(schema)s::regnamespace
        ORDER BY 1
        """,
        ("index", "definition"),
    ),
    "triggers": Kind(
        """
        SELECT t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal
        ORDER BY 1
        """,
        ("trigger", "definition", "enabled"),
    ),
    "functions": Kind(
        """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_function_result(p.oid), p.prokind, p.prosecdef, p.provolatile,
               p.proparallel, p.proisstrict, p.proconfig::text, p.proacl::text,
               pg_get_userbyid(p.proowner), obj_description(p.oid, 'pg_proc'),
               pg_get_functiondef(p.oid)
        FROM pg_proc p WHERE p.pronamespace = %(schema)s::regnamespace
        ORDER BY 1
        """,
        (
            "function",
            "result",
            "kind",
            "security definer",
            "volatility",
            "parallel",
            "strict",
            "config",
            "acl",
            "owner",
            "comment",
            "definition",
        ),
    ),
    "views": Kind(
        """
        SELECT c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('v', 'm')
        ORDER BY 1
        """,
        ("view", "definition"),
    ),
    "types": Kind(
        """
        SELECT t.typname, t.typtype, format_type(t.oid, NULL)
        FROM pg_type t WHERE t.typnamespace = %(schema)s::regnamespace
        ORDER BY 1
        """,
        ("type", "kind", "formatted"),
    ),
}

Described = dict[str, list[tuple[Any, ...]]]


def catalog(dsn: str, schema: str, *, tracked: bool = True) -> Described:
    """Every object in ``schema`` as comparable rows, plus the recorded versions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # regnamespace parses its input as an identifier, so quote the name.
        quoted = sql.Identifier(schema).as_string(conn)
        described = {
            name: [tuple(row) for row in conn.execute(kind.query, {"schema": quoted})]
            for name, kind in CATALOG.items()
        }
        if tracked:
            versions = conn.execute(
                sql.SQL("SELECT version, name FROM {} ORDER BY 1").format(
                    sql.Identifier(schema, _installer.TRACKING_TABLE)
                )
            )
            described["tracked versions"] = [tuple(row) for row in versions]
    return described


def differences(fresh: Described, upgraded: Described) -> str:
    """What differs, object by object and field by field, for a person to read."""
    report: list[str] = []
    for name in fresh:
        kind = CATALOG.get(name, Kind("", ("version", "name")))
        ours = {row[: kind.key]: row for row in fresh[name]}
        theirs = {row[: kind.key]: row for row in upgraded[name]}
        lines: list[str] = []
        for key in sorted(ours.keys() | theirs.keys(), key=repr):
            label = " ".join(map(str, key))
            if key not in theirs:
                lines.append(f"  {label}: only in the schema.sql install")
            elif key not in ours:
                lines.append(f"  {label}: only in the migrated install")
            elif ours[key] != theirs[key]:
                for field, a, b in zip(kind.fields, ours[key], theirs[key], strict=False):
                    if a != b:
                        lines.append(f"  {label}: {field} differs")
                        lines.extend(
                            "    " + line
                            for line in difflib.unified_diff(
                                str(a).splitlines(),
                                str(b).splitlines(),
                                "schema.sql",
                                "migrations",
                                lineterm="",
                                n=1,
                            )
                        )
        if lines:
            report += [f"{name}:", *lines]
    return "\n".join(report)


def install_fresh(dsn: str, schema: str) -> None:
    """Install from schema.sql."""
    with connect(dsn) as conn:
        steps = _installer.plan(conn, schema)
        assert [step.kind for step in steps] == ["schema"]
        _installer.install(conn, schema=schema)


def install_by_replaying(dsn: str, schema: str) -> None:
    """Create 0.4.5's table with 0001, then let the installer apply every later migration."""
    seed, *later = _installer.load_migrations()
    with connect(dsn) as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}, pg_temp").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(seed.sql))
    with connect(dsn) as conn:
        steps = _installer.plan(conn, schema)
        assert [step.kind for step in steps] == ["adopt"] + ["migration"] * len(later)
        assert [m.version for step in steps for m in step.records] == [1] + [
            m.version for m in later
        ]
        _installer.install(conn, schema=schema)


@pytest.mark.parametrize("schema", ["public", "Rc Breakers"])
def test_schema_sql_equals_replayed_migrations(
    pg_make_database: Callable[[], str], schema: str
) -> None:
    """A schema.sql install and a 0001+0002+... install have identical catalogs and versions."""
    fresh_dsn, upgraded_dsn = pg_make_database(), pg_make_database()
    install_fresh(fresh_dsn, schema)
    install_by_replaying(upgraded_dsn, schema)
    fresh, upgraded = catalog(fresh_dsn, schema), catalog(upgraded_dsn, schema)
    assert fresh["functions"], "schema.sql created no functions"
    if fresh != upgraded:
        pytest.fail("schema.sql and the migrations differ:\n" + differences(fresh, upgraded))
    secrets = set()
    for dsn in (fresh_dsn, upgraded_dsn):
        with connect(dsn) as conn:
            # Data, not catalog: each install (fresh or upgraded) drew its own channel secret.
            query = sql.SQL("SELECT secret FROM {}").format(
                sql.Identifier(schema, "rc_notify_secret")
            )
            rows = conn.execute(query).fetchall()
            assert len(rows) == 1
            assert len(rows[0][0]) == 32
            secrets.add(bytes(rows[0][0]))
            assert _installer.plan(conn, schema) == []
            assert _installer.applied_versions(conn, schema) == [
                m.version for m in _installer.load_migrations()
            ]
    assert len(secrets) == 2


@pytest.mark.parametrize("version", [m.version for m in _installer.load_migrations()[:-1]])
def test_an_install_left_at_any_older_version_upgrades_to_the_fresh_catalog(
    pg_make_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """Installed by a package that knew migrations up to ``version``, then upgraded: as fresh."""
    fresh_dsn, upgraded_dsn = pg_make_database(), pg_make_database()
    install_fresh(fresh_dsn, "public")
    every = _installer.load_migrations()
    with monkeypatch.context() as older_package:
        older_package.setattr(_installer, "load_migrations", lambda: every[:version])
        install_by_replaying(upgraded_dsn, "public")
    with connect(upgraded_dsn) as conn:
        steps = _installer.plan(conn, "public")
        assert [m.version for step in steps for m in step.records] == [
            m.version for m in every[version:]
        ]
        _installer.install(conn, schema="public")
    fresh, upgraded = catalog(fresh_dsn, "public"), catalog(upgraded_dsn, "public")
    if fresh != upgraded:
        pytest.fail(
            f"schema.sql and an upgrade from version {version} differ:\n"
            + differences(fresh, upgraded)
        )


def test_every_migration_file_is_recognised() -> None:
    """Migration files are numbered 0001, 0002, ... without gaps, and none is silently ignored."""
    migrations = _installer.load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "seed_0_4_5"
    on_disk = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
    assert on_disk == [m.filename for m in migrations]


def test_seed_migration_is_the_0_4_5_table(pg_empty_dsn: str) -> None:
    """0001 builds exactly the table, trigger and indexes 0.4.5's pg-setup created."""
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(_installer.load_migrations()[0].sql))
    described = catalog(pg_empty_dsn, "public", tracked=False)
    columns = {row[0]: row[1:4] for row in described["columns"]}
    assert columns == {
        "rc_circuit_breakers.resource_key": ("character varying(255)", True, None),
        "rc_circuit_breakers.namespace": (
            "character varying(255)",
            True,
            "'default'::character varying",
        ),
        "rc_circuit_breakers.state": ("character varying(20)", True, None),
        "rc_circuit_breakers.failure_count": ("integer", True, "0"),
        "rc_circuit_breakers.open_until": ("timestamp with time zone", False, None),
        "rc_circuit_breakers.execution_log": ("jsonb", True, "'[]'::jsonb"),
        "rc_circuit_breakers.created_at": ("timestamp with time zone", True, "now()"),
        "rc_circuit_breakers.updated_at": ("timestamp with time zone", True, "now()"),
    }
    constraints = {row[0]: row[2] for row in described["constraints"] if row[1] in ("p", "c")}
    assert constraints == {
        "rc_circuit_breakers rc_circuit_breakers_pkey": "PRIMARY KEY (resource_key, namespace)",
        "rc_circuit_breakers rc_circuit_breakers_state_check": (
            "CHECK (((state)::text = ANY ((ARRAY['CLOSED'::character varying, "
            "'OPEN'::character varying, 'HALF_OPEN'::character varying])::text[])))"
        ),
    }
    assert {row[0] for row in described["indexes"]} == {
        "rc_circuit_breakers_pkey",
        "idx_rc_circuit_breakers_state",
        "idx_rc_circuit_breakers_namespace",
    }
    assert [row[0] for row in described["triggers"]] == ["rc_circuit_breakers_updated_at"]
    assert "BEFORE UPDATE" in described["triggers"][0][1]
    assert [row[0] for row in described["functions"]] == ["rc_update_updated_at()"]
    # Running it twice is harmless (the installer never needs to, but a person might).
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(_installer.load_migrations()[0].sql))


def test_an_upgrade_that_makes_the_status_view_again_keeps_its_grants(
    pg_make_database: Callable[[], str],
    pg_role: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Version 15 drops and makes rc_circuit_breaker_status and rc_status again: an
    application role's privileges on them (pg-setup grants both) survive the upgrade."""
    dsn, role = pg_make_database(), pg_role()
    every = _installer.load_migrations()
    with monkeypatch.context() as older_package:
        older_package.setattr(_installer, "load_migrations", lambda: every[:14])
        install_by_replaying(dsn, "public")
    privileges = sql.SQL(
        "SELECT has_table_privilege({role}, 'rc_circuit_breaker_status', 'SELECT'),"
        " has_function_privilege({role}, 'rc_status(text, text)', 'EXECUTE'),"
        " has_function_privilege('public', 'rc_status(text, text)', 'EXECUTE')"
    ).format(role=sql.Literal(role))
    with connect(dsn) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON rc_circuit_breaker_status TO {}").format(sql.Identifier(role))
        )
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION rc_status(text, text) TO {}").format(
                sql.Identifier(role)
            )
        )
        assert conn.execute(privileges).fetchone() == (True, True, False)
        _installer.install(conn, schema="public")
        assert _installer.applied_versions(conn) == [m.version for m in every]
        assert conn.execute(privileges).fetchone() == (True, True, False)
