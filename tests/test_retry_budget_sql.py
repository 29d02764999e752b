"""The retry budget's SQL: one delimited section, the same in schema.sql and its migration."""

from __future__ import annotations

import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SECTION = re.compile(r"-- ==== retry budget:.*-- ==== end of retry budget =*\n", re.S)

# Budget functions that schema.sql defines next to rc_forget and rc_gc, outside the section.
_HOUSEKEEPING = {"rc_budget_forget", "rc_budget_gc", "rc_budget_status"}


def _section(path: Path) -> str:
    found = SECTION.findall(path.read_text(encoding="utf-8"))
    assert len(found) == 1, path.name
    return str(found[0])


def _code(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION @extschema@\.(rc_budget_\w+)\(.*?\n\$\$;\n", re.S
)


def test_schema_sql_ends_with_the_same_section_as_its_migration() -> None:
    """schema.sql ends with the migration's section, byte for byte, with each function a
    later migration redefines as that migration has it."""
    schema = (SQL_DIR / "schema.sql").read_text(encoding="utf-8")
    section = _section(SQL_DIR / "migrations" / "0004_retry_budget.sql")
    later = sorted(p for p in (SQL_DIR / "migrations").glob("*.sql") if p.name > "0004")
    for migration in later:
        for newer in _FUNCTION.finditer(migration.read_text(encoding="utf-8")):
            older = [m for m in _FUNCTION.finditer(section) if m.group(1) == newer.group(1)]
            if not older and newer.group(1) in _HOUSEKEEPING:
                continue  # defined before the section, with rc_gc
            assert len(older) == 1, (migration.name, newer.group(1))
            section = section.replace(older[0].group(0), newer.group(0))
    assert schema.endswith(section)


def test_functions_pin_pg_catalog_and_qualify_every_reference() -> None:
    """No function resolves a name through a schema others may write to; all are revoked."""
    code = _code(_section(SQL_DIR / "schema.sql"))
    definitions = re.split(r"CREATE OR REPLACE FUNCTION ", code)[1:]
    assert len(definitions) == 3
    created = []
    for definition in definitions:
        assert definition.startswith("@extschema@.rc_"), definition[:40]
        name = definition.split("(", 1)[0].removeprefix("@extschema@.")
        created.append(name)
        header, body = definition.split("AS $$", 1)
        assert "SET search_path = pg_catalog, pg_temp" in header, name
        assert ("SECURITY DEFINER" in header) == (not name.endswith("_at")), name
        for reference in re.findall(r"(\S*)\brc_\w+", body.split("$$", 1)[0]):
            assert reference.endswith("@extschema@."), (name, reference)
    revoke = re.search(r"REVOKE EXECUTE ON FUNCTION(?P<body>.*?)FROM PUBLIC;", code, re.S)
    assert revoke is not None
    assert sorted(re.findall(r"(rc_\w+)\(", revoke["body"])) == sorted(created)
