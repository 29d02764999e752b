"""Is the database ready for the breakers: installed, up to date, usable by this role?

Shared by the store (to tell a missing ``pg-setup`` from an outage) and by
``resilient-circuit-cli pg-check`` (a readiness probe). Reads the catalog only:
nothing here needs a privilege on the breaker table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = (
    "ADMIN_FUNCTIONS",
    "CALL_FUNCTIONS",
    "LISTEN_FUNCTIONS",
    "Functions",
    "inspect_functions",
)

#: What every protected call may run: without these no breaker works.
CALL_FUNCTIONS = (
    "rc_try_acquire",
    "rc_record",
    "rc_record_many",
    "rc_record_runs",
    "rc_configure",
    "rc_status",
)
#: What operators and the admin API run (``force``, ``reset``, ``set_state``).
ADMIN_FUNCTIONS = ("rc_force", "rc_reset", "rc_set_state")
#: What hearing transitions needs: the database names the channels and LISTENs (0018, 0019).
LISTEN_FUNCTIONS = ("rc_listen", "rc_listen_all")
#: A parameter this library passes that an older install's function lacks: such a
#: function counts as missing, so that the fix named is ``pg-setup``, not a bare
#: "function does not exist" at the first call of every breaker.
REQUIRED_PARAMETERS = {"rc_configure": "p_restore"}  # migration 0014

_QUERY = """
SELECT f.name,
       EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
               WHERE p.pronamespace = n.oid AND p.proname = f.name
                 AND (f.parameter IS NULL
                      OR f.parameter OPERATOR(pg_catalog.=) ANY (p.proargnames))),
       EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
               WHERE p.pronamespace = n.oid AND p.proname = f.name
                 AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')),
       n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
FROM ROWS FROM (pg_catalog.unnest(%(names)s::text[]),
                pg_catalog.unnest(%(parameters)s::text[])) WITH ORDINALITY AS f(name, parameter, i)
LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = %(schema)s
ORDER BY f.i
"""


@dataclass(frozen=True)
class Functions:
    """Which of the library's functions a schema holds, and which this role may run."""

    schema_usable: bool  # the schema exists and the role has USAGE on it
    missing: tuple[str, ...]
    not_executable: tuple[str, ...]  # present, but EXECUTE is not granted

    @property
    def installed(self) -> bool:
        """Nothing at all is missing."""
        return not self.missing

    def describe_missing(self, schema: str) -> str:
        if set(self.missing) >= set(CALL_FUNCTIONS):
            return f"resilient_circuit's functions are not installed in schema {schema!r}"
        names = ", ".join(self.missing)
        return f"schema {schema!r} lacks {names} (installed by an older version)"


def inspect_functions(
    conn: psycopg.Connection[Any],
    schema: str,
    names: tuple[str, ...] = CALL_FUNCTIONS + ADMIN_FUNCTIONS,
) -> Functions:
    """Look ``names`` up in ``schema`` of ``conn``'s database."""
    rows = conn.execute(_QUERY, _params(names, schema)).fetchall()
    return _functions(rows)


async def ainspect_functions(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    names: tuple[str, ...] = CALL_FUNCTIONS + ADMIN_FUNCTIONS,
) -> Functions:
    """The coroutine twin of ``inspect_functions``."""
    cur = await conn.execute(_QUERY, _params(names, schema))
    return _functions(await cur.fetchall())


def _params(names: tuple[str, ...], schema: str) -> dict[str, Any]:
    parameters = [REQUIRED_PARAMETERS.get(name) for name in names]
    return {"names": list(names), "parameters": parameters, "schema": schema}


def _functions(rows: list[tuple[Any, ...]]) -> Functions:
    return Functions(
        schema_usable=bool(rows) and bool(rows[0][3]),
        missing=tuple(name for name, exists, _, _ in rows if not exists),
        not_executable=tuple(name for name, exists, ok, _ in rows if exists and not ok),
    )
