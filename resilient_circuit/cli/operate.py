"""The operator's commands: ``status``, ``force``, ``reset`` and ``metrics``.

Each reads or changes the shared breakers through the same SQL functions and status
view an application uses, so an application role sees and touches only its granted
namespaces. Every failure is one ``Error:`` line (exit status 1); colour is used only
when the output is a terminal (click strips it otherwise).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import click

from resilient_circuit._machine import CircuitState
from resilient_circuit._settings import database_dsn, database_schema, default_namespace

if TYPE_CHECKING:
    from resilient_circuit.instrumentation.fleet import BreakerRow

__all__ = ("force", "metrics", "reset", "status")

_DSN_HELP = "Default: RC_DB_DSN or RC_DB_* (also from .env)."
_SCHEMA_HELP = "Default: RC_DB_SCHEMA, else public."
_NAMESPACE_HELP = "Default: RC_NAMESPACE, else default."
_STATE_COLOURS = {"CLOSED": "green", "OPEN": "red", "HALF_OPEN": "yellow", "DISABLED": "blue"}
_STATES = [s.value for s in CircuitState]


def _psycopg_missing(exc: ImportError) -> click.ClickException:
    return click.ClickException(
        "this command needs psycopg: pip install 'resilient_circuit[postgres]'"
    )


def checked_names(key: str, namespace: str | None) -> tuple[str, str]:
    """A command's key and namespace, checked as the library checks them."""
    from resilient_circuit.storage.base import check_key_and_namespace

    try:
        return check_key_and_namespace(key, namespace, default_namespace())
    except (TypeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def session(dsn: str | None, schema: str | None) -> Iterator[tuple[Any, str]]:
    """A connection and the schema name; database errors become one clear line."""
    try:
        import psycopg
        from psycopg import errors

        from resilient_circuit._installer import SetupError
        from resilient_circuit.cli.connect import connect
    except ImportError as exc:
        raise _psycopg_missing(exc) from exc
    target = dsn or database_dsn()
    if not target:
        raise click.ClickException(
            "no database configured: set RC_DB_DSN (or RC_DB_HOST ...) or pass --dsn"
        )
    schema_name = schema or database_schema()
    try:
        conn = connect(target, connect_timeout=10)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with conn:
            yield conn, schema_name
    except (errors.UndefinedTable, errors.UndefinedFunction, errors.InvalidSchemaName) as exc:
        raise click.ClickException(
            f"the breaker functions are not installed in schema {schema_name!r} of this "
            f"database (or are too old); run `resilient-circuit-cli pg-setup --schema "
            f"{schema_name}`"
        ) from exc
    except errors.InsufficientPrivilege as exc:
        raise click.ClickException(f"permission denied: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise click.ClickException(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.removeprefix("rc: ")


# ------------------------------------------------------------------------ status


@click.command("status")
@click.option("--namespace", metavar="NAME", help="Only breakers of this namespace.")
@click.option(
    "--state",
    type=click.Choice(_STATES, case_sensitive=False),
    help="Only breakers in this state.",
)
@click.option("--key", "key_pattern", metavar="PATTERN", help="Only keys matching (* and ?).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--schema", metavar="NAME", help=_SCHEMA_HELP)
def status(
    namespace: str | None,
    state: str | None,
    key_pattern: str | None,
    output_format: str,
    dsn: str | None,
    schema: str | None,
) -> None:
    """Show every breaker you may see: state, window, lifetime calls, cooldown left.

    \b
    Example:
      resilient-circuit-cli status --state OPEN --key 'payments*'
      resilient-circuit-cli status --namespace shop --format json
    """
    from resilient_circuit.instrumentation.fleet import read_fleet

    with session(dsn, schema) as (conn, schema_name):
        rows = read_fleet(
            conn, schema_name, namespace=namespace, state=state, key_pattern=key_pattern
        )
    if output_format == "json":
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
        return
    if not rows:
        click.echo("No breakers.")
        return
    width = max(80, shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80)
    for line in status_table(rows, width, datetime.now(timezone.utc)):
        click.echo(line)


_HEADERS = ("NAMESPACE", "KEY", "STATE", "WINDOW", "OK/FAILED", "OPEN FOR", "CHANGED")


def status_table(
    rows: list[BreakerRow], width: int, now: datetime, *, colour: bool = True
) -> list[str]:
    """The table's lines, at most ``width`` characters wide (long names are cut with …);
    ``colour`` styles the states (click.echo drops the styles unless on a terminal)."""
    from resilient_circuit.cli import printable

    cells = [
        [
            printable(r.namespace),
            printable(r.key),
            f"{r.state} held" if r.held else r.state,
            f"{r.window_failures}F/{r.window_calls}",
            f"{_compact(r.successes)}/{_compact(r.failures)}",
            _duration(r.cooldown_remaining) if r.state == "OPEN" and not r.held else "-",
            _duration(now - r.updated_at) + " ago",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(_HEADERS)]
    gap = 2
    excess = sum(widths) + gap * (len(widths) - 1) - width
    # Keys, then namespaces, give up their width first: the other columns are short.
    for column, floor in ((1, 12), (0, 9)):
        if excess > 0:
            cut = min(excess, widths[column] - floor)
            if cut > 0:
                widths[column] -= cut
                excess -= cut
    lines = [_line(list(_HEADERS), widths, gap, colour=False)]
    lines += [_line(c, widths, gap, colour=colour) for c in cells]
    return lines


def _line(cells: list[str], widths: list[int], gap: int, *, colour: bool) -> str:
    parts = []
    for i, (text, w) in enumerate(zip(cells, widths, strict=True)):
        if len(text) > w:
            text = text[: w - 1] + "…"
        padded = text.ljust(w) if i < len(cells) - 1 else text
        if colour and i == 2:
            state = text.split()[0]
            padded = click.style(padded, fg=_STATE_COLOURS.get(state), bold=state == "OPEN")
        parts.append(padded)
    return (" " * gap).join(parts).rstrip()


def _compact(n: int) -> str:
    if n < 10_000:
        return str(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)  # pragma: no cover


def _duration(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = max(0.0, value.total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


# ------------------------------------------------------------------ force, reset


def _existing(conn: Any, schema: str, key: str, namespace: str) -> None:
    """Refuse, in one line, a key that has no breaker (a typo must not create one)."""
    from psycopg import sql

    from resilient_circuit.cli import printable

    found = conn.execute(
        sql.SQL("SELECT 1 FROM {}(%s, %s)").format(sql.Identifier(schema, "rc_status")),
        [key, namespace],
    ).fetchone()
    if found is None:
        raise click.ClickException(
            f"no breaker {printable(namespace)}/{printable(key)}: check the key and"
            " --namespace (`resilient-circuit-cli status` lists the breakers you may see)"
        )


def _takes_hold(conn: Any, schema: str) -> bool:
    """Whether this install's ``rc_force`` has a hold argument (held states)."""
    row = conn.execute(
        """
        SELECT max(p.pronargs) FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = 'rc_force' AND n.nspname = %s
        """,
        [schema],
    ).fetchone()
    return bool(row and row[0] and row[0] >= 4)


@click.command("force")
@click.argument("key")
@click.argument("state", type=click.Choice(_STATES, case_sensitive=False))
@click.option(
    "--hold",
    is_flag=True,
    help="OPEN: stay OPEN (no automatic half-open) until the next force or reset.",
)
@click.option("--namespace", metavar="NAME", help=_NAMESPACE_HELP)
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--schema", metavar="NAME", help=_SCHEMA_HELP)
def force(
    key: str, state: str, hold: bool, namespace: str | None, dsn: str | None, schema: str | None
) -> None:
    """Force the breaker KEY into STATE for every process sharing it (DISABLED: every
    call runs and nothing trips, until the next force or reset).

    \b
    Example:
      resilient-circuit-cli force payments OPEN --hold --namespace shop
    """
    from psycopg import sql

    from resilient_circuit.cli import printable

    target = state.upper()
    if hold and target not in ("OPEN", "DISABLED"):
        raise click.UsageError(f"--hold applies to OPEN and DISABLED only, not {target}")
    key, ns = checked_names(key, namespace)
    with session(dsn, schema) as (conn, schema_name):
        _existing(conn, schema_name, key, ns)
        args: list[Any] = [key, target, ns]
        if hold:
            if not _takes_hold(conn, schema_name):
                raise click.ClickException(
                    "this database's breaker functions cannot hold a state (rc_force has no "
                    "hold argument); upgrade them with `resilient-circuit-cli pg-setup`"
                )
            args.append(True)
        statement = sql.SQL("SELECT * FROM {}({})").format(
            sql.Identifier(schema_name, "rc_force"),
            sql.SQL(", ").join(sql.Placeholder() for _ in args),
        )
        new, generation = conn.execute(statement, args).fetchone()[:2]
    held = " (held)" if hold else ""
    click.echo(f"{printable(ns)}/{printable(key)}: {new}{held}, generation {generation}.")


@click.command("reset")
@click.argument("key")
@click.option("--namespace", metavar="NAME", help=_NAMESPACE_HELP)
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--schema", metavar="NAME", help=_SCHEMA_HELP)
def reset(key: str, namespace: str | None, dsn: str | None, schema: str | None) -> None:
    """Back to a fresh CLOSED breaker (releasing any hold); its configuration stays.

    \b
    Example:
      resilient-circuit-cli reset payments --namespace shop
    """
    from psycopg import sql

    from resilient_circuit.cli import printable

    key, ns = checked_names(key, namespace)
    with session(dsn, schema) as (conn, schema_name):
        _existing(conn, schema_name, key, ns)
        statement = sql.SQL("SELECT * FROM {}(%s, %s)").format(
            sql.Identifier(schema_name, "rc_reset")
        )
        new, generation = conn.execute(statement, [key, ns]).fetchone()[:2]
    click.echo(f"{printable(ns)}/{printable(key)}: {new}, generation {generation}.")


# ------------------------------------------------------------------------ metrics


@click.command("metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--schema", metavar="NAME", help=_SCHEMA_HELP)
def metrics(port: int, host: str, dsn: str | None, schema: str | None) -> None:
    """Serve every breaker's shared state as Prometheus metrics (one query per scrape).

    \b
    Example:
      resilient-circuit-cli metrics --port 9464 --host 0.0.0.0
      curl -s localhost:9464/metrics | grep resilient_circuit_fleet_state
    """
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from resilient_circuit.instrumentation.prometheus import FleetCollector
    except ImportError as exc:
        name = exc.name or ""
        if name.startswith("prometheus"):
            raise click.ClickException(
                "metrics needs prometheus_client: pip install 'resilient_circuit[prometheus]'"
            ) from exc
        raise _psycopg_missing(exc) from exc
    # Fail now, in one line, rather than serve a fleet that can never be read.
    with session(dsn, schema) as (conn, schema_name):
        from resilient_circuit.instrumentation.fleet import read_fleet

        count = len(read_fleet(conn, schema_name))
    target = dsn or database_dsn()
    assert target is not None  # _session refused a missing DSN
    collector = FleetCollector(target, schema=schema_name)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = server.server_address[1]
    click.echo(
        f"Serving {count} breaker(s) on http://{host}:{bound}/metrics (Ctrl-C to stop).",
    )
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        collector.close()
