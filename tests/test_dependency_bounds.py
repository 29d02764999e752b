"""The oldest versions pyproject.toml allows must provide what the store calls.

Proven by running the PostgreSQL tests with psycopg 3.1.18 and psycopg-pool 3.3.0 in a
separate environment; here, each bound is held to the release that introduced the API.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Python 3.11+ reads TOML itself; the bounds are the same on every Python.
tomllib = pytest.importorskip("tomllib")

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# API the store uses -> the first release that has it.
NEEDED = {
    # ConnectionPool.drain / AsyncConnectionPool.drain: every connection dropped after an
    # outage (psycopg-pool 3.3.0; 3.2 raises AttributeError mid-call).
    "psycopg-pool": (3, 3),
    # psycopg.generators.execute, Connection.wait, errors.error_from_result,
    # Transformer.set_pgresult(format=...) and load_row: all in 3.1.
    "psycopg": (3, 1, 18),
}


def _lower_bound(requirement_name: str) -> tuple[int, ...]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for spec in extras["postgres"]:
        match = re.fullmatch(rf"{re.escape(requirement_name)}(\[[^\]]*\])?>=([\d.]+),<\d+", spec)
        if match:
            return tuple(int(part) for part in match.group(2).split("."))
    raise AssertionError(f"no '{requirement_name}>=X,<Y' in the postgres extra")


@pytest.mark.parametrize("name", sorted(NEEDED))
def test_the_lowest_allowed_version_has_the_api_the_store_uses(name: str) -> None:
    assert _lower_bound(name) >= NEEDED[name]
