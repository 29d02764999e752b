"""Install and upgrade the breaker's tables and PL/pgSQL functions in one schema.

All SQL ships in the package's ``sql`` folder: ``schema.sql`` is the full current
state, ``migrations/NNNN_*.sql`` upgrade older installs one version at a time.
``rc_schema_migrations`` records which versions a schema holds.  A table left by
resilient_circuit 0.4.5 (which kept no such record) counts as version 1.

Everything runs in one transaction under a fixed advisory lock, so two installers
started at once neither interleave nor leave a half-upgraded schema behind.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

__all__ = [
    "ALL_NAMESPACES",
    "DEFAULT_NAMESPACE",
    "GRANTS_TABLE",
    "LOCK_KEY",
    "SCHEMA_PLACEHOLDER",
    "STATUS_VIEW",
    "TABLE",
    "TRACKING_TABLE",
    "DependentObjects",
    "ForeignPrivilege",
    "Migration",
    "PermissionDenied",
    "RoleNotFound",
    "SetupError",
    "Step",
    "Target",
    "WritableSchema",
    "WrongSchemaOwner",
    "applied_versions",
    "connection_target",
    "foreign_privileges",
    "granted_namespaces",
    "install",
    "load_migrations",
    "load_schema_sql",
    "plan",
    "render",
]

TABLE = "rc_circuit_breakers"
TRACKING_TABLE = "rc_schema_migrations"
GRANTS_TABLE = "rc_namespace_grants"
STATUS_VIEW = "rc_circuit_breaker_status"

#: What the SQL files write in front of our own objects' names; replaced by the target
#: schema's quoted name, so the functions resolve nothing through ``search_path``.
SCHEMA_PLACEHOLDER = "@extschema@"

#: The namespace a role may use when ``install`` is given an ``app_role`` without
#: ``namespaces`` and the role holds none yet: the one the library uses by default.
DEFAULT_NAMESPACE = "default"

#: Grants every namespace.
ALL_NAMESPACES = "*"

#: The version a 0.4.5 table is (``0001_seed_0_4_5.sql`` reproduces it).
SEED_VERSION = 1

#: One key for every installer of every schema: installs are rare, and a single key
#: means no two of them ever run DDL against the same database concurrently.
#: The value is "rc_setup" in ASCII, so it is recognisable in ``pg_locks``.
LOCK_KEY = 0x72635F7365747570

# PostgreSQL silently truncates longer identifiers, which would make the schema we
# create differ from the one we were asked for.
_MAX_IDENTIFIER_BYTES = 63

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_TRACKING_DDL = """\
CREATE TABLE IF NOT EXISTS {table} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


# --------------------------------------------------------------------------- errors


class SetupError(Exception):
    """A failure that one line explains; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Target:
    """Where a connection goes, for messages (never includes the password)."""

    host: str
    port: str
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"database {self.dbname!r} on {self.host}:{self.port} (user {self.user!r})"


class PermissionDenied(SetupError):
    """The role may not log in, or lacks a privilege the installation needs."""


class RoleNotFound(SetupError):
    """The role passed as ``app_role`` does not exist."""


class WritableSchema(SetupError):
    """Roles other than the schema's owner may create objects in it."""


class WrongSchemaOwner(SetupError):
    """The schema, or an object in it with one of our names, belongs to another role."""


class DependentObjects(SetupError):
    """An upgrade must replace one of our objects that objects of yours depend on."""


# ------------------------------------------------------------------------ SQL files


@dataclass(frozen=True)
class Migration:
    """One ``sql/migrations/NNNN_name.sql`` file."""

    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def _sql_root() -> Traversable:
    # Installed wheels carry the repository's sql/ folder as resilient_circuit/sql.
    # A source checkout (or an editable install, which does not copy it) keeps it
    # next to the package instead.
    try:
        packaged = resources.files("resilient_circuit").joinpath("sql")
        if packaged.is_dir():
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    source = Path(__file__).resolve().parent.parent / "sql"
    if source.is_dir():
        return source
    raise SetupError(
        "the SQL files are missing from this installation of resilient_circuit "
        "(expected a 'sql' folder inside the package); reinstall the package"
    )


def load_schema_sql() -> str:
    """The text of ``schema.sql``, the full current state."""
    return _sql_root().joinpath("schema.sql").read_text(encoding="utf-8")


def render(text: str, schema: str, conn: psycopg.Connection[Any]) -> str:
    """``text`` with every ``@extschema@`` replaced by ``schema``, quoted."""
    return text.replace(SCHEMA_PLACEHOLDER, sql.Identifier(schema).as_string(conn))


def load_migrations() -> list[Migration]:
    """Every numbered migration, in version order."""
    folder = _sql_root().joinpath("migrations")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            # Two files claiming one version would make the applied set ambiguous.
            raise SetupError(f"two migrations share version {version}: {entry.name}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Step:
    """One unit of the plan: SQL to run, then the migrations it marks as applied."""

    kind: Literal["schema", "adopt", "migration"]
    description: str
    sql: str
    records: tuple[Migration, ...]


@dataclass(frozen=True)
class _Catalog:
    schema_exists: bool
    table_exists: bool
    tracking_exists: bool
    execution_log_type: str | None
    applied: frozenset[int]


def _inspect(conn: psycopg.Connection[Any], schema: str) -> _Catalog:
    # Names are bound as parameters: the schema comes from the command line.
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
    if row is None:
        return _Catalog(False, False, False, None, frozenset())
    relations = {
        name: oid
        for oid, name in conn.execute(
            """
            SELECT c.oid, c.relname FROM pg_class c
            WHERE c.relnamespace = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
            """,
            [row[0], [TABLE, TRACKING_TABLE]],
        ).fetchall()
    }
    log_type = None
    if TABLE in relations:
        type_row = conn.execute(
            """
            SELECT format_type(atttypid, atttypmod) FROM pg_attribute
            WHERE attrelid = %s AND attname = 'execution_log' AND NOT attisdropped
            """,
            [relations[TABLE]],
        ).fetchone()
        log_type = type_row[0] if type_row else None
    applied: frozenset[int] = frozenset()
    if TRACKING_TABLE in relations:
        query = sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, TRACKING_TABLE))
        applied = frozenset(version for (version,) in conn.execute(query).fetchall())
    return _Catalog(True, TABLE in relations, TRACKING_TABLE in relations, log_type, applied)


def applied_versions(conn: psycopg.Connection[Any], schema: str = "public") -> list[int]:
    """The migration versions ``schema`` holds (``[1]`` for a bare 0.4.5 table)."""
    catalog = _inspect(conn, schema)
    if catalog.table_exists and not catalog.tracking_exists:
        return [SEED_VERSION]
    return sorted(catalog.applied)


def plan(conn: psycopg.Connection[Any], schema: str = "public") -> list[Step]:
    """What ``install`` would run in ``schema``, in order; empty when it is up to date."""
    _check_schema_name(schema)
    migrations = load_migrations()
    catalog = _inspect(conn, schema)
    newest = migrations[-1].version if migrations else 0
    unknown = sorted(v for v in catalog.applied if v > newest)
    if unknown:
        raise SetupError(
            f"schema {schema!r} is at version {unknown[-1]}, newer than this resilient_circuit "
            f"knows (up to {newest}); upgrade the package instead"
        )
    if not catalog.table_exists:
        # Nothing to upgrade: schema.sql is the same end state as replaying every
        # migration, and much quicker to run.
        return [Step("schema", "install schema.sql", load_schema_sql(), tuple(migrations))]
    steps: list[Step] = []
    applied = set(catalog.applied)
    if not catalog.tracking_exists:
        if catalog.execution_log_type != "jsonb":
            raise SetupError(
                f"{schema}.{TABLE} exists but was not created by pg-setup (no {TRACKING_TABLE} "
                f"table, and it is not the 0.4.5 layout); move it aside and run pg-setup again"
            )
        seed = [m for m in migrations if m.version == SEED_VERSION]
        steps.append(Step("adopt", "adopt the resilient_circuit 0.4.5 table", "", tuple(seed)))
        applied.add(SEED_VERSION)
    for migration in migrations:
        if migration.version not in applied:
            steps.append(
                Step("migration", f"apply {migration.filename}", migration.sql, (migration,))
            )
    return steps


# ------------------------------------------------------------------------ installing


def _check_identifier(name: str, what: str) -> None:
    if not name or "\x00" in name or len(name.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"{what} must be 1 to {_MAX_IDENTIFIER_BYTES} bytes long, got {name!r}")


def _check_schema_name(schema: str) -> None:
    _check_identifier(schema, "schema")
    # The schema's name is written into the functions' dollar-quoted bodies: a `$` could end
    # a body early (and `$$; ...` would run SQL of its author's choosing), a control
    # character has no business in a name that messages and logs print.
    if "$" in schema or not schema.isprintable():
        raise ValueError(
            f"schema must not contain '$' or control characters, got {schema!r}; "
            f"choose a plain name such as 'rc'"
        )


def _check_app_role(conn: psycopg.Connection[Any], schema: str, role: str) -> None:
    # MEMBER, not USAGE: a NOINHERIT member can still SET ROLE to the role it belongs to.
    row = conn.execute(
        """
        SELECT r.rolsuper,
               pg_has_role(r.oid, coalesce(c.relowner, o.oid), 'MEMBER'),
               pg_has_role(r.oid, d.datdba, 'MEMBER'),
               n.nspowner IS NOT NULL AND pg_has_role(r.oid, n.nspowner, 'MEMBER')
        FROM pg_roles r
        CROSS JOIN (SELECT oid FROM pg_roles WHERE rolname = current_user) AS o
        CROSS JOIN (SELECT datdba FROM pg_database WHERE datname = current_database()) AS d
        LEFT JOIN pg_namespace n ON n.nspname = %s
        LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s
        WHERE r.rolname = %s
        """,
        [schema, TABLE, role],
    ).fetchone()
    if row is None:
        raise RoleNotFound(
            f"role {role!r} does not exist on {connection_target(conn)}; "
            f"create it first (CREATE ROLE ... LOGIN)"
        )
    superuser, acts_as_owner, owns_database, owns_schema = row
    if superuser or acts_as_owner:
        # Revoking its table privileges would then cut off the SECURITY DEFINER
        # functions themselves, and the separation would be void anyway.
        raise SetupError(
            f"role {role!r} is a superuser, or owns the breaker objects or is a member of the "
            f"role installing them; --app-role must be a separate, unprivileged role"
        )
    if owns_database or owns_schema:
        # The owner of a schema may drop any object in it, and the database owner owns
        # `public` through pg_database_owner: either could put its own code in place of
        # a function that runs with the installer's rights.
        what = "the database" if owns_database else f"schema {schema!r}"
        raise SetupError(
            f"role {role!r} owns {what} (directly or through membership) and could replace the "
            f"breaker functions; --app-role must be a role that owns neither the database nor "
            f"the schema (e.g. create the database with another owner, or give it one: "
            f"ALTER DATABASE ... OWNER TO <admin role>)"
        )


def _check_schema_owner(conn: psycopg.Connection[Any], schema: str) -> None:
    # The owner of a schema may drop any object in it, whoever owns that object: the
    # functions would be only as safe as that role. On PostgreSQL 15 and later `public`
    # belongs to pg_database_owner, i.e. to whichever role owns the database.
    row = conn.execute(
        """
        SELECT CASE WHEN n.nspowner = dbo.oid THEN d.datdba ELSE n.nspowner END = me.oid,
               n.nspowner::regrole::text, d.datdba::regrole::text, n.nspowner = dbo.oid
        FROM pg_namespace n
        CROSS JOIN (SELECT oid FROM pg_roles WHERE rolname = current_user) AS me
        CROSS JOIN (SELECT datdba FROM pg_database WHERE datname = current_database()) AS d
        LEFT JOIN (SELECT oid FROM pg_roles WHERE rolname = 'pg_database_owner') AS dbo
               ON true
        WHERE n.nspname = %s
        """,
        [schema],
    ).fetchone()
    if row is None or row[0]:
        return
    _, owner, database_owner, through_database = row
    installer = sql.Identifier(str(_one_value(conn, "SELECT current_user")))
    alter = sql.SQL("ALTER SCHEMA {} OWNER TO {};").format(sql.Identifier(schema), installer)
    create = sql.SQL("CREATE SCHEMA rc AUTHORIZATION {};").format(installer)
    whose = (
        f"owned by pg_database_owner, i.e. by the database's owner {database_owner}"
        if through_database
        else f"owned by {owner}"
    )
    raise WrongSchemaOwner(
        f"refusing to install into schema {schema!r}: it is {whose}, not by the installing "
        f"role, and a schema's owner may drop and replace the breaker functions, which run with "
        f"the installer's rights. Either run {alter.as_string(conn)} or install into a "
        f"dedicated schema the installer owns: {create.as_string(conn)} then pg-setup "
        f"--schema rc (and RC_DB_SCHEMA=rc for the application)"
    )


def _one_value(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _check_objects_owned(conn: psycopg.Connection[Any], schema: str) -> None:
    # CREATE OR REPLACE keeps an existing function's owner: a look-alike that another role
    # created while it could (say, when public was writable) would stay that role's, and so
    # would its SECURITY DEFINER rights, after we "replaced" it.
    rows = conn.execute(
        r"""
        SELECT o.kind || ' ' || o.name || ' (owner ' || o.owner::regrole::text || ')'
        FROM (SELECT oid FROM pg_namespace WHERE nspname = %s) AS n,
        LATERAL (
            SELECT 'function' AS kind, p.proname::text AS name, p.proowner AS owner
            FROM pg_proc p WHERE p.pronamespace = n.oid
            UNION ALL
            SELECT 'relation', c.relname::text, c.relowner FROM pg_class c
            WHERE c.relnamespace = n.oid
            UNION ALL
            SELECT 'type', t.typname::text, t.typowner FROM pg_type t
            WHERE t.typnamespace = n.oid
        ) AS o
        WHERE (o.name LIKE 'rc\_%%' OR o.name LIKE 'idx\_rc\_%%' OR o.name LIKE '\_rc\_%%')
          AND o.owner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        ORDER BY 1
        """,
        [schema],
    ).fetchall()
    if rows:
        found = "; ".join(row[0] for row in rows[:10])
        raise WrongSchemaOwner(
            f"refusing to install into schema {schema!r}: it holds objects with the breaker's "
            f"names that another role owns ({found}); that role could change them. Drop them "
            f"(or, if they are a previous install by another role, run pg-setup as that role)"
        )


def _check_schema_not_writable(conn: psycopg.Connection[Any], schema: str) -> None:
    # A role that can create objects in the schema can plant look-alikes of what our
    # functions use, or replace them outright: the install would be only as safe as
    # the least trusted of those roles.
    rows = conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM pg_namespace n
        CROSS JOIN LATERAL aclexplode(n.nspacl) AS a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE n.nspname = %s AND a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner
        ORDER BY 1
        """,
        [schema],
    ).fetchall()
    if rows:
        grantees = ", ".join(row[0] for row in rows)
        fix = sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {};").format(
            sql.Identifier(schema), sql.SQL(grantees)
        )
        raise WritableSchema(
            f"refusing to install into schema {schema!r}: {grantees} may create objects in it, "
            f"and could plant objects that the breaker functions would run with their owner's "
            f"rights; run as its owner: {fix.as_string(conn)}"
        )


def _check_schema_safe(conn: psycopg.Connection[Any], schema: str) -> None:
    """Only the installing role can change what the functions in ``schema`` run."""
    _check_schema_owner(conn, schema)
    _check_schema_not_writable(conn, schema)
    _check_objects_owned(conn, schema)
    _check_no_foreign_triggers(conn, schema)


def _check_no_foreign_triggers(conn: psycopg.Connection[Any], schema: str) -> None:
    # A trigger on our tables runs inside the SECURITY DEFINER functions, i.e. with the
    # installer's rights, whoever wrote its function: the TRIGGER privilege (or a trigger
    # left by someone who held it) is as good as owning the functions.
    rows = conn.execute(
        r"""
        SELECT 'TRIGGER on ' || c.relname || ' held by '
               || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL aclexplode(c.relacl) AS a
        WHERE n.nspname = %s AND c.relname LIKE 'rc\_%%'
          AND a.privilege_type = 'TRIGGER' AND a.grantee <> c.relowner
        UNION ALL
        SELECT 'trigger ' || t.tgname || ' on ' || c.relname || ' runs '
               || t.tgfoid::regproc::text || ' of ' || p.proowner::regrole::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE n.nspname = %s AND c.relname LIKE 'rc\_%%' AND NOT t.tgisinternal
          AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        ORDER BY 1
        """,
        [schema, schema],
    ).fetchall()
    if rows:
        found = "; ".join(row[0] for row in rows[:10])
        raise WrongSchemaOwner(
            f"refusing to install into schema {schema!r}: another role could run code inside "
            f"the breaker functions, with the installer's rights, through triggers ({found}); "
            f"REVOKE TRIGGER on those tables and drop triggers you did not create"
        )


def _restore_search_path(conn: psycopg.Connection[Any], previous: str | None) -> None:
    if previous is not None:
        conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)", [previous])


def _check_namespaces(namespaces: Sequence[str]) -> list[str]:
    checked: list[str] = []
    for namespace in namespaces:
        if not isinstance(namespace, str) or not 1 <= len(namespace) <= 255:
            raise ValueError(
                f"namespaces must hold names of 1 to 255 characters, got {namespace!r}"
            )
        if "\x00" in namespace:
            raise ValueError(f"namespaces must not contain NUL characters, got {namespace!r}")
        if namespace not in checked:
            checked.append(namespace)
    if not checked:
        raise ValueError("namespaces must name at least one namespace (or '*' for all)")
    return checked


def _grants_by_oid(conn: psycopg.Connection[Any], schema: str) -> bool:
    # Before migration 0007 (an install that an older package left) grants went by name.
    row = conn.execute(
        "SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'role_oid'"
        " AND NOT a.attisdropped",
        [schema, GRANTS_TABLE],
    ).fetchone()
    return row is not None


def _namespace_grant_statements_by_name(
    schema: str, role: str, namespaces: Sequence[str] | None
) -> list[sql.Composed]:
    grants = sql.Identifier(schema, GRANTS_TABLE)
    if namespaces is None:
        return [
            sql.SQL(
                "INSERT INTO {} (role_name, namespace) SELECT {}, {} "
                "WHERE NOT EXISTS (SELECT 1 FROM {} WHERE role_name = {})"
            ).format(grants, role, DEFAULT_NAMESPACE, grants, role)
        ]
    values = sql.SQL(", ").join(sql.SQL("({}, {})").format(role, ns) for ns in namespaces)
    return [
        sql.SQL("DELETE FROM {} WHERE role_name = {} AND NOT namespace = ANY({})").format(
            grants, role, list(namespaces)
        ),
        sql.SQL("INSERT INTO {} (role_name, namespace) VALUES {} ON CONFLICT DO NOTHING").format(
            grants, values
        ),
    ]


def _namespace_grant_statements(
    schema: str, role: str, namespaces: Sequence[str] | None
) -> list[sql.Composed]:
    grants = sql.Identifier(schema, GRANTS_TABLE)
    # Grants follow the role's OID (role_name is kept for people to read): a renamed role
    # keeps them and a new role given an old name gets none. Those of dropped roles go.
    statements = [
        sql.SQL(
            "DELETE FROM {} AS g WHERE NOT EXISTS "
            "(SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.oid = g.role_oid)"
        ).format(grants)
    ]
    if namespaces is None:
        # A role keeps what it was given; a new one gets the namespace calls use when they
        # name none, which is what an application written for one namespace needs.
        statements.append(
            sql.SQL(
                "INSERT INTO {} (role_oid, role_name, namespace) SELECT r.oid, r.rolname, {} "
                "FROM pg_catalog.pg_roles AS r WHERE r.rolname = {} "
                "AND NOT EXISTS (SELECT 1 FROM {} AS g WHERE g.role_oid = r.oid)"
            ).format(grants, DEFAULT_NAMESPACE, role, grants)
        )
        return statements
    return [
        *statements,
        # Exactly the namespaces asked for: running pg-setup again narrows as well as widens.
        sql.SQL(
            "DELETE FROM {} WHERE role_oid = "
            "(SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = {}) "
            "AND NOT namespace = ANY({})"
        ).format(grants, role, list(namespaces)),
        sql.SQL(
            "INSERT INTO {} (role_oid, role_name, namespace) "
            "SELECT r.oid, r.rolname, n.namespace FROM pg_catalog.pg_roles AS r, "
            "pg_catalog.unnest({}::pg_catalog.text[]) AS n(namespace) WHERE r.rolname = {} "
            "ON CONFLICT (role_oid, namespace) DO UPDATE SET role_name = excluded.role_name"
        ).format(grants, list(namespaces), role),
    ]


def granted_namespaces(conn: psycopg.Connection[Any], schema: str, role: str) -> list[str]:
    """The namespaces ``role`` may use in ``schema`` (``['*']``: all), sorted."""
    query = sql.SQL(
        "SELECT g.namespace FROM {} AS g JOIN pg_catalog.pg_roles AS r ON r.oid = g.role_oid"
        " WHERE r.rolname = %s ORDER BY 1"
    ).format(sql.Identifier(schema, GRANTS_TABLE))
    return [str(namespace) for (namespace,) in conn.execute(query, [role]).fetchall()]


def _current_search_path(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_catalog.current_setting('search_path')").fetchone()
    return str(row[0]) if row else ""


def connection_target(conn: psycopg.Connection[Any]) -> Target:
    """Where ``conn`` is connected, for messages."""
    info = conn.info
    return Target(info.host, str(info.port), info.dbname, info.user)


def _record_statement(schema: str, migrations: Iterable[Migration]) -> sql.Composed | None:
    rows = [sql.SQL("({}, {})").format(m.version, m.name) for m in migrations]
    if not rows:
        return None
    return sql.SQL(
        "INSERT INTO {} (version, name) VALUES {} ON CONFLICT (version) DO NOTHING"
    ).format(sql.Identifier(schema, TRACKING_TABLE), sql.SQL(", ").join(rows))


# The functions an application may call: the SECURITY DEFINER rc_* ones, except the
# explicit-time "_at" variants (they let a caller choose "now").  Functions that are
# not SECURITY DEFINER would run with the caller's own privileges, which exclude
# the table, so they are of no use to the application and are not granted either.
_PUBLIC_FUNCTION_FILTER = r"""p.prokind = 'f' AND p.prosecdef
          AND p.proname LIKE 'rc\_%' AND p.proname NOT LIKE '%\_at'
          AND p.prorettype <> 'trigger'::regtype"""


def _public_functions(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str]]:
    query = f"""
        SELECT p.proname, pg_get_function_identity_arguments(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %s AND {_PUBLIC_FUNCTION_FILTER.replace("%", "%%")}
        ORDER BY 1, 2
        """
    return [(name, args) for name, args in conn.execute(query, [schema]).fetchall()]


# Privileges on our objects held by roles other than their owner (PUBLIC included), which
# only the owner's functions should use: every table and sequence (not the status view, whose
# SELECT is granted on purpose and which shows only the namespaces granted) and every
# function an application is not granted. A role's ALTER DEFAULT PRIVILEGES applies to
# whatever it creates, ours included: without this, a reporting role given SELECT on future
# tables would read the channel secret and every namespace's rows.
_FOREIGN_PRIVILEGES = rf"""
    SELECT 'TABLE' AS kind, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS object,
           a.grantee, string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS held
    FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
    WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
      AND (c.relname LIKE 'rc\_%%' OR c.relname LIKE '\_rc\_%%')
      AND c.relname <> %(view)s AND a.grantee <> c.relowner
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT 'FUNCTION', p.oid::pg_catalog.regprocedure::text, a.grantee,
           string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)
    FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
    CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
    WHERE n.nspname = %(schema)s
      AND (p.proname LIKE 'rc\_%%' OR p.proname LIKE '\_rc\_%%')
      AND NOT ({_PUBLIC_FUNCTION_FILTER.replace("%", "%%")}) AND a.grantee <> p.proowner
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
"""


@dataclass(frozen=True)
class ForeignPrivilege:
    """Privileges a role other than the owner holds on one of the owner-only objects."""

    kind: Literal["TABLE", "FUNCTION"]
    object: str  # qualified and quoted, as the catalog prints it
    grantee: str  # quoted role name, or PUBLIC
    privileges: str

    def __str__(self) -> str:
        return f"{self.privileges} on {self.kind.lower()} {self.object} to {self.grantee}"


def foreign_privileges(conn: psycopg.Connection[Any], schema: str) -> list[ForeignPrivilege]:
    """Privileges that roles other than the owner hold on the tables and internal functions.

    Reads the catalog only, so any role may ask (``pg-check`` does).
    """
    rows = conn.execute(
        f"""
        SELECT f.kind, f.object,
               CASE WHEN f.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, f.held
        FROM ({_FOREIGN_PRIVILEGES}) AS f LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = f.grantee
        ORDER BY 1, 2, 3
        """,
        {"schema": schema, "view": STATUS_VIEW},
    ).fetchall()
    return [ForeignPrivilege(kind, obj, grantee, held) for kind, obj, grantee, held in rows]


def _revoke_foreign_statements(
    conn: psycopg.Connection[Any], schema: str, *, objects_exist: bool
) -> list[sql.SQL | sql.Composed]:
    """REVOKE, grantee by grantee, what ``foreign_privileges`` finds (before app grants)."""
    if objects_exist:
        # Names come from the catalog (quoted by the server), never from user input. CASCADE
        # also takes back what a grantee passed on WITH GRANT OPTION.
        return [
            sql.SQL("REVOKE ALL ON {} {} FROM {} CASCADE").format(
                sql.SQL(found.kind), sql.SQL(found.object), sql.SQL(found.grantee)
            )
            for found in foreign_privileges(conn, schema)
        ]
    # A dry run cannot list objects that the pending SQL has not created yet, so it shows
    # the same catalog lookup done on the server.
    body = sql.SQL(
        """
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT x.kind, x.object,
               CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
        FROM ({query}) AS x LEFT JOIN pg_roles AS r ON r.oid = x.grantee
    LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM %s CASCADE', f.kind, f.object, f.grantee);
    END LOOP;
END
"""
    ).format(
        query=sql.SQL(
            _FOREIGN_PRIVILEGES.replace("%%", "%")
            .replace("%(schema)s", sql.Literal(schema).as_string(conn))
            .replace("%(view)s", sql.Literal(STATUS_VIEW).as_string(conn))
        )
    )
    text = body.as_string(conn)
    tag = "$revoke$"
    while tag in text:  # the schema's name could contain the dollar-quote tag
        tag = tag[:-1] + "_$"
    return [sql.SQL("DO " + tag + text + tag)]


def _grant_statements(
    conn: psycopg.Connection[Any], schema: str, role: str, *, functions_exist: bool
) -> list[sql.SQL | sql.Composed]:
    to_role = sql.Identifier(role)
    statements: list[sql.SQL | sql.Composed] = [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), to_role),
        # Direct table access would let the application bypass the state machine,
        # so privileges granted by hand earlier (0.4.5 needed them) are taken back.
        sql.SQL("REVOKE ALL ON TABLE {}, {}, {} FROM {}").format(
            sql.Identifier(schema, TABLE),
            sql.Identifier(schema, TRACKING_TABLE),
            sql.Identifier(schema, GRANTS_TABLE),
            to_role,
        ),
    ]
    if functions_exist:
        for name, args in _public_functions(conn, schema):
            # The argument list comes from pg_get_function_identity_arguments(),
            # i.e. from the server's catalog, never from user input.
            statements.append(
                sql.SQL("GRANT EXECUTE ON FUNCTION {}({}) TO {}").format(
                    sql.Identifier(schema, name), sql.SQL(args), to_role
                )
            )
    else:
        # A dry run cannot list functions that the pending SQL has not created yet,
        # so it shows the same catalog lookup done on the server.
        statements.append(_grant_functions_block(conn, schema, role))
    statements.append(
        sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
            sql.Identifier(schema, STATUS_VIEW), to_role
        )
    )
    return statements


def _grant_functions_block(conn: psycopg.Connection[Any], schema: str, role: str) -> sql.SQL:
    body = sql.SQL(
        """
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid FROM pg_proc p
        WHERE p.pronamespace = {schema}::regnamespace AND {filter}
        ORDER BY p.proname
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, {role});
    END LOOP;
END
"""
    ).format(
        schema=sql.Literal(sql.Identifier(schema).as_string(conn)),
        filter=sql.SQL(_PUBLIC_FUNCTION_FILTER),
        role=sql.Literal(role),
    )
    text = body.as_string(conn)
    tag = "$grant$"
    while tag in text:  # the role name could contain the dollar-quote tag
        tag = tag[:-1] + "_$"
    return sql.SQL("DO " + tag + text + tag)


def install(
    conn: psycopg.Connection[Any],
    *,
    schema: str = "public",
    app_role: str | None = None,
    namespaces: Sequence[str] | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Bring ``schema`` up to date in one transaction; return the SQL it ran.

    With ``app_role``, that role gets USAGE on the schema, EXECUTE on the public
    ``rc_*`` functions and SELECT on the status view, and no table privileges; the
    functions let it use exactly ``namespaces`` (``'*'``: all).  Without
    ``namespaces`` a role keeps the namespaces it was given before, and a role that
    holds none gets ``'default'``.  A schema in which roles other than its owner may
    create objects is refused (``WritableSchema``, naming the ``REVOKE`` that fixes it).
    With ``dry_run`` nothing is changed (the transaction is read-only and rolled
    back) and the returned SQL is what a real run would execute.  An empty list
    means there was nothing to do.  On a connection already inside a transaction
    the work joins it and the caller commits.
    """
    _check_schema_name(schema)
    if app_role is not None:
        _check_identifier(app_role, "app_role")
    if namespaces is not None:
        if app_role is None:
            raise ValueError("namespaces needs app_role: they are granted to that role")
        namespaces = _check_namespaces(namespaces)
    outermost = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    done: list[str] = []
    applying: list[str] = []  # the migration being run, for messages

    def run(statement: sql.SQL | sql.Composed) -> None:
        done.append(statement.as_string(conn))
        if not dry_run:
            conn.execute(statement)

    try:
        with conn.transaction(force_rollback=dry_run):
            if dry_run and outermost:
                # Belt and braces: even a bug here cannot write during a dry run.
                conn.execute("SET TRANSACTION READ ONLY")
            # SET LOCAL outlives our savepoint when the caller's transaction goes on.
            previous_path = None if outermost else _current_search_path(conn)
            # Our own catalog queries run as the installer (often a superuser): they must
            # not find an operator or function that someone planted in a writable schema.
            conn.execute("SET LOCAL search_path TO pg_catalog, pg_temp")
            lock = sql.SQL("SELECT pg_advisory_xact_lock({})").format(LOCK_KEY)
            if not dry_run:
                # Taken before looking at the catalog, so the plan cannot go stale.
                conn.execute(lock)
            if app_role is not None:
                _check_app_role(conn, schema, app_role)
            schema_exists = _inspect(conn, schema).schema_exists
            if schema_exists:
                _check_schema_safe(conn, schema)
            steps = plan(conn, schema)
            if not steps and app_role is None and not foreign_privileges(conn, schema):
                _restore_search_path(conn, previous_path)
                return []
            done.append(lock.as_string(conn))
            if not schema_exists:
                run(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            # Older SQL files create objects in the first schema of search_path;
            # newer ones name it (@extschema@) and their functions pin
            # search_path = pg_catalog, pg_temp.  pg_temp last keeps temporary
            # objects from shadowing ours.
            run(sql.SQL("SET LOCAL search_path TO {}, pg_temp").format(sql.Identifier(schema)))
            if steps:
                run(sql.SQL(_TRACKING_DDL).format(table=sql.Identifier(schema, TRACKING_TABLE)))
            for step in steps:
                applying[:] = [m.filename for m in step.records]
                if step.sql.strip():
                    run(sql.SQL(render(step.sql, schema, conn)))
                record = _record_statement(schema, step.records)
                if record is not None:
                    run(record)
            conn.execute("SET LOCAL search_path TO pg_catalog, pg_temp")
            # Before the app role's grants: they are what a role other than the owner holds.
            for statement in _revoke_foreign_statements(
                conn, schema, objects_exist=not (dry_run and steps)
            ):
                run(statement)
            if app_role is not None:
                grants = _grant_statements(
                    conn, schema, app_role, functions_exist=not (dry_run and steps)
                )
                if (dry_run and steps) or _grants_by_oid(conn, schema):
                    grants += _namespace_grant_statements(schema, app_role, namespaces)
                else:
                    grants += _namespace_grant_statements_by_name(schema, app_role, namespaces)
                for statement in grants:
                    run(statement)
                _check_app_role(conn, schema, app_role)
            # Checked again as the last thing before commit, in the same transaction: a
            # grant or owner change made meanwhile, or an object the files created under
            # another owner, undoes the whole install.
            _check_schema_safe(conn, schema)
            _restore_search_path(conn, previous_path)
    except psycopg.errors.DependentObjectsStillExist as exc:
        # A view or function of the user's built on our status view (or another object
        # a migration replaces): PostgreSQL names them in its detail. Nothing was changed.
        detail = (exc.diag.message_detail or "").replace("\n", "; ")
        raise DependentObjects(
            f"the upgrade ({', '.join(applying) or 'migration'}) must replace objects that "
            f"others depend on, on {connection_target(conn)}: {exc.diag.message_primary}"
            f"{f' ({detail})' if detail else ''}; nothing was changed. Drop those objects, "
            "run pg-setup again, then create them again (pg-setup --dry-run prints the SQL "
            "the upgrade runs)"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"permission denied on {connection_target(conn)}: {exc.diag.message_primary}; "
            f"run pg-setup as the owner of schema {schema!r} or a role allowed to create it"
        ) from exc
    return done
