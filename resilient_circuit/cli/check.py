"""``pg-check``: is the database ready for this application's breakers? (a readiness probe)

Exit status, as resilient_circuit 0.8.6: 0 ready; 1 not usable (schema not
installed, the role may not run the functions or use the namespace, the database
refuses the login or does not exist, or roles other than the owner hold privileges on
the breaker's tables or internal functions); 2 unreachable (no server answered); 3 usable
but incomplete (calls work; the install is older than this library, or the role
may not run the admin functions). Reads only: it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from resilient_circuit import _installer
from resilient_circuit.cli.connect import ServerUnreachable, connect
from resilient_circuit.storage.postgres import readiness

__all__ = ("INCOMPLETE", "NOT_USABLE", "READY", "UNREACHABLE", "Verdict", "check")

READY, NOT_USABLE, UNREACHABLE, INCOMPLETE = 0, 1, 2, 3

#: The key ``pg-check`` reads (never writes) to prove the namespace is usable.
PROBE_KEY = "resilient-circuit-cli pg-check"


@dataclass(frozen=True)
class Verdict:
    status: int
    message: str


def check(dsn: str, schema: str, namespace: str) -> Verdict:
    """Connect to ``dsn`` and judge ``schema`` for ``namespace``."""
    try:
        conn = connect(dsn, connect_timeout=5)
    except ServerUnreachable as exc:
        return Verdict(UNREACHABLE, str(exc))
    except _installer.SetupError as exc:
        return Verdict(NOT_USABLE, str(exc))
    with conn:
        where = f"schema {schema!r} of {_installer.connection_target(conn)}"
        return _judge(conn, schema, namespace, where)


def _judge(conn: psycopg.Connection[Any], schema: str, namespace: str, where: str) -> Verdict:
    setup = f"resilient-circuit-cli pg-setup --schema {schema}"
    role = conn.info.user
    found = readiness.inspect_functions(conn, schema)
    call_path = set(readiness.CALL_FUNCTIONS)
    if call_path & set(found.missing):
        return Verdict(NOT_USABLE, f"not ready: {found.describe_missing(schema)}; run `{setup}`")
    if not found.schema_usable or call_path & set(found.not_executable):
        return Verdict(
            NOT_USABLE,
            f"not usable: role {role!r} may not run the breaker functions in {where}; "
            f"grant it with `{setup} --app-role {role} --namespace {namespace}`",
        )
    try:
        conn.execute(
            sql.SQL("SELECT count(*) FROM {}.rc_status(%s, %s)").format(sql.Identifier(schema)),
            [PROBE_KEY, namespace],
        )
    except psycopg.errors.InsufficientPrivilege as exc:
        return Verdict(
            NOT_USABLE,
            f"not usable: {exc.diag.message_primary}; grant it with "
            f"`{setup} --app-role {role} --namespace {namespace}`",
        )
    foreign = _installer.foreign_privileges(conn, schema)
    if foreign:
        # Not "usable but incomplete" (3): calls work, but any role holding these reads every
        # namespace's rows or the channel secret, bypassing the namespace grants. A probe
        # that passed would let that go unnoticed; pg-setup takes them back in one run.
        listed = "; ".join(str(each) for each in foreign[:10])
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        return Verdict(
            NOT_USABLE,
            f"not safe: in {where}, roles other than the owner hold privileges on the "
            f"breaker's tables or internal functions ({listed}{more}), which bypass the "
            f"namespace grants; run `{setup}` as the owner to revoke them",
        )
    if found.missing:
        return Verdict(INCOMPLETE, f"usable but incomplete: {found.describe_missing(schema)}")
    if found.not_executable:
        names = ", ".join(found.not_executable)
        return Verdict(
            INCOMPLETE,
            f"usable but incomplete: role {role!r} may not run {names} (admin functions)",
        )
    pending = _pending_migrations(conn, schema)
    if pending:
        return Verdict(
            INCOMPLETE,
            f"usable but incomplete: {where} lacks {', '.join(pending)}; run `{setup}`",
        )
    return Verdict(READY, f"ready: {where}, namespace {namespace!r}, role {role!r}")


def _pending_migrations(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The migrations ``pg-setup`` would apply, when this role may read the record of them."""
    try:
        steps = _installer.plan(conn, schema)
    except (psycopg.errors.InsufficientPrivilege, _installer.SetupError):
        return []
    return [m.filename for step in steps for m in step.records]
