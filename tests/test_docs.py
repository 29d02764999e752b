"""The documentation site keeps up with the code it describes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import psycopg

from resilient_circuit import _installer

ROOT = Path(__file__).resolve().parent.parent
SQL_REFERENCE = ROOT / "docs" / "reference" / "sql.md"


def test_every_function_an_application_role_is_granted_has_a_section(pg_dsn: str) -> None:
    """Each rc_* function pg-setup --app-role grants is documented under its own heading."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        granted = {name for name, _ in _installer._public_functions(conn, "public")}
    headings = set(re.findall(r"^## `(rc_\w+)`$", SQL_REFERENCE.read_text(), re.MULTILINE))
    assert granted, "no function would be granted: the test would prove nothing"
    assert granted <= headings, f"undocumented: {sorted(granted - headings)}"
    assert headings <= granted, f"documented but not granted: {sorted(headings - granted)}"


def test_every_explicit_time_variant_is_listed() -> None:
    """The owner-only *_at functions of schema.sql are all named in the SQL reference."""
    schema = (ROOT / "sql" / "schema.sql").read_text()
    variants = set(re.findall(r"FUNCTION @extschema@\.(rc_\w+_at)\(", schema))
    text = SQL_REFERENCE.read_text()
    assert variants
    assert {name for name in variants if f"`{name}(" not in text} == set()


def _assigned(tree: ast.AST) -> set[str]:
    names = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return names


def test_readme_examples_that_use_a_store_build_it() -> None:
    """A README Python example that calls ``storage.…`` says where ``storage`` comes from."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    using = [block for block in blocks if re.search(r"\bstorage\.", block)]
    assert using
    for block in using:
        tree = ast.parse(block)
        assert "storage" in _assigned(tree), block
