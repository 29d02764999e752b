"""The operator's commands (status, force, reset, forget, gc, metrics) against a real
PostgreSQL, through click's runner and as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from click.testing import CliRunner

from resilient_circuit._installer import install
from resilient_circuit.cli import main as cli
from resilient_circuit.cli.operate import status_table
from resilient_circuit.instrumentation.fleet import BreakerRow, read_fleet
from tests.conftest import PgRole

pytestmark = pytest.mark.postgres

CLI = [sys.executable, "-m", "resilient_circuit.cli"]
SECRET = "hunter2secret"
ANSI = re.compile(r"\x1b\[")


def _seed(dsn: str) -> None:
    """Three breakers: shop/payments OPEN (2 failures), shop/search CLOSED, ops/cron CLOSED."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT rc_configure('payments', 'shop', p_cooldown => '1 hour')")
        for ok in (True, False):
            conn.execute("SELECT * FROM rc_record('payments', %s, 'shop')", [ok])
        conn.execute("SELECT * FROM rc_record('search', true, 'shop')")
        conn.execute("SELECT * FROM rc_record('cron', true, 'ops')")


def _run(*args: str, color: bool = False) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), color=color)
    return result.exit_code, result.output


def test_status_table_lists_every_breaker_in_80_columns(pg_dsn: str) -> None:
    """The table has a header and one row per breaker, none wider than 80 columns."""
    _seed(pg_dsn)
    code, out = _run("status", "--dsn", pg_dsn)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "KEY",
        "STATE",
        "WINDOW",
        "OK/FAILED",
        "OPEN",
        "FOR",
        "CHANGED",
    ]
    rows = [line.split()[:3] for line in lines[1:]]
    assert rows == [
        ["ops", "cron", "CLOSED"],
        ["shop", "payments", "OPEN"],
        ["shop", "search", "CLOSED"],
    ]
    assert all(len(line) <= 80 for line in lines)
    assert not ANSI.search(out)


def test_status_filters_and_json(pg_dsn: str) -> None:
    """--namespace, --state and --key narrow the list; --format json gives the view's fields."""
    _seed(pg_dsn)
    code, out = _run("status", "--dsn", pg_dsn, "--format", "json", "--state", "open")
    assert code == 0, out
    [row] = json.loads(out)
    assert (row["namespace"], row["key"], row["state"]) == ("shop", "payments", "OPEN")
    assert (row["successes"], row["failures"], row["window"]) == (1, 1, "F")
    assert 3000 < row["cooldown_remaining"] <= 3600
    code, out = _run("status", "--dsn", pg_dsn, "--format", "json", "--namespace", "shop")
    assert [r["key"] for r in json.loads(out)] == ["payments", "search"]
    code, out = _run("status", "--dsn", pg_dsn, "--format", "json", "--key", "s*ar?h")
    assert [r["key"] for r in json.loads(out)] == ["search"]
    code, out = _run("status", "--dsn", pg_dsn, "--key", "nothing*")
    assert (code, out.strip()) == (0, "No breakers.")


def test_long_names_are_cut_to_fit(pg_dsn: str) -> None:
    """Keys and namespaces longer than the terminal allows end in an ellipsis; rows fit 80."""
    long_key = "k" * 120
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_record(%s, true, %s)", [long_key, "n" * 40])
        rows = read_fleet(conn, "public")
    lines = status_table(rows, 80, datetime.now(timezone.utc), colour=False)
    assert all(len(line) <= 80 for line in lines)
    assert "…" in lines[1]


def test_state_is_coloured_only_when_asked_for_a_terminal(pg_dsn: str) -> None:
    """With colour (a terminal) the state is styled; piped output has no escape codes."""
    _seed(pg_dsn)
    code, out = _run("status", "--dsn", pg_dsn, color=True)
    assert code == 0
    assert ANSI.search(out)
    proc = subprocess.run([*CLI, "status", "--dsn", pg_dsn], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "payments" in proc.stdout
    assert not ANSI.search(proc.stdout)


def test_force_and_reset_change_the_shared_breaker(pg_dsn: str) -> None:
    """force OPEN then reset: each prints the new state and the status view agrees."""
    _seed(pg_dsn)
    code, out = _run("force", "search", "open", "--namespace", "shop", "--dsn", pg_dsn)
    assert (code, out.strip()) == (0, "shop/search: OPEN, generation 1.")
    _, listed = _run("status", "--dsn", pg_dsn, "--format", "json", "--state", "OPEN")
    assert {r["key"] for r in json.loads(listed)} == {"payments", "search"}
    code, out = _run("reset", "search", "--namespace", "shop", "--dsn", pg_dsn)
    assert (code, out.strip()) == (0, "shop/search: CLOSED, generation 2.")


def test_force_hold_uses_the_held_state_when_the_functions_have_one(pg_dsn: str) -> None:
    """--hold holds OPEN where rc_force takes a hold argument, else says to upgrade, in one line."""
    _seed(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        arity = conn.execute(
            "SELECT max(pronargs) FROM pg_proc WHERE proname = 'rc_force'"
        ).fetchone()
    code, out = _run("force", "search", "OPEN", "--hold", "--namespace", "shop", "--dsn", pg_dsn)
    if arity is not None and arity[0] >= 4:
        assert (code, out.strip()) == (0, "shop/search: OPEN (held), generation 1.")
    else:
        assert code == 1
        assert out.count("\n") == 1
        assert "pg-setup" in out
    code, out = _run("force", "search", "CLOSED", "--hold", "--dsn", pg_dsn)
    assert code == 2
    assert "--hold applies to OPEN" in out


@pytest.mark.parametrize(
    "command",
    [["force", "nope", "OPEN"], ["reset", "nope"], ["forget", "nope"]],
)
def test_an_unknown_key_is_one_error_line(pg_dsn: str, command: list[str]) -> None:
    """force, reset and forget of a key that has no breaker fail in one line, creating nothing."""
    code, out = _run(*command, "--namespace", "shop", "--dsn", pg_dsn)
    assert code == 1
    assert out == (
        "Error: no breaker shop/nope: check the key and --namespace"
        " (`resilient-circuit-cli status` lists the breakers you may see)\n"
    )
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM rc_circuit_breakers").fetchone() == (0,)


COMMANDS = [
    ["status"],
    ["force", "k", "OPEN"],
    ["reset", "k"],
    ["forget", "k"],
    ["gc", "--idle", "1 day"],
    ["metrics", "--port", "0"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_database_is_one_line_without_the_password(command: list[str]) -> None:
    """Every command reports a server that does not answer in one line, hiding the password."""
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:1/db"
    code, out = _run(*command, "--dsn", dsn)
    assert code == 1
    assert out.startswith("Error: ")
    assert out.count("\n") == 1
    assert SECRET not in out


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_without_the_schema_names_pg_setup(
    pg_empty_dsn: str, command: list[str]
) -> None:
    """Against a database where pg-setup never ran, the one line says to run it."""
    code, out = _run(*command, "--dsn", pg_empty_dsn)
    assert code == 1
    assert out.count("\n") == 1
    assert "pg-setup" in out


def test_an_app_role_is_refused_other_namespaces(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A role granted 'shop' sees only shop in status and gets 'permission denied' for ops."""
    _seed(pg_dsn)
    role = pg_role()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install(conn, app_role=role, namespaces=["shop"])
    app = role.dsn(pg_dsn)
    _, out = _run("status", "--dsn", app, "--format", "json")
    assert {r["namespace"] for r in json.loads(out)} == {"shop"}
    assert role.password not in out
    code, out = _run("force", "cron", "OPEN", "--namespace", "ops", "--dsn", app)
    assert code == 1
    assert out.startswith("Error: permission denied")
    assert out.count("\n") == 1
    assert role.password not in out


def test_gc_and_forget_through_the_cli(pg_dsn: str) -> None:
    """forget deletes one breaker; gc --idle deletes CLOSED breakers idle that long."""
    _seed(pg_dsn)
    assert _run("forget", "search", "--namespace", "shop", "--dsn", pg_dsn)[0] == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE rc_circuit_breakers SET updated_at = now() - interval '2 days'")
    code, out = _run("gc", "--idle", "1 day", "--dsn", pg_dsn)
    assert (code, out.splitlines()[0]) == (0, "Deleted 1 CLOSED breaker(s) unchanged for 1 day.")
    _, listed = _run("status", "--dsn", pg_dsn, "--format", "json")
    assert [r["key"] for r in json.loads(listed)] == ["payments"]


@pytest.mark.parametrize("idle", ["banana", "1 mon", "-5 days"])
def test_gc_names_idle_when_it_is_not_a_usable_interval(pg_dsn: str, idle: str) -> None:
    """gc refuses an --idle PostgreSQL cannot use with one line naming --idle and the value."""
    code, out = _run("gc", "--idle", idle, "--dsn", pg_dsn)
    assert code == 1
    assert out.startswith("Error: --idle must be ")
    assert repr(idle) in out
    assert out.count("\n") == 1


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    """--help of every command shows an example invocation."""
    code, out = _run(command, "--help")
    assert code == 0
    assert "resilient-circuit-cli " + command in out


def test_status_through_a_real_subprocess(pg_dsn: str) -> None:
    """The installed entry point prints JSON a script can read."""
    _seed(pg_dsn)
    proc = subprocess.run(
        [*CLI, "status", "--format", "json", "--dsn", pg_dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 3


def test_metrics_serves_the_fleet_over_http(pg_dsn: str) -> None:
    """metrics --port 0 serves the fleet collector; a real HTTP GET reads every breaker."""
    _seed(pg_dsn)
    with subprocess.Popen(
        [*CLI, "metrics", "--port", "0", "--dsn", pg_dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", banner)
            assert found, banner
            url = f"http://127.0.0.1:{found.group(1)}/metrics"
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read().decode()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "resilient_circuit_fleet_up 1.0" in body
    assert 'resilient_circuit_fleet_state{key="payments",namespace="shop",state="OPEN"} 1.0' in body
    assert (
        'resilient_circuit_fleet_calls_total{key="cron",namespace="ops",outcome="success"} 1.0'
        in body
    )


def test_metrics_refuses_to_start_without_the_schema(pg_empty_dsn: str) -> None:
    """metrics exits with one line instead of serving a fleet it can never read."""
    proc = subprocess.run(
        [*CLI, "metrics", "--port", "0", "--dsn", pg_empty_dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "pg-setup" in proc.stderr


def _row(state: str, *, held: bool = False) -> BreakerRow:
    now = datetime.now(timezone.utc)
    return BreakerRow(
        namespace="ns",
        key="k",
        state=state,
        generation=3,
        window="FF",
        failure_count=2,
        open_until=now + timedelta(seconds=42),
        cooldown_remaining=None if held else timedelta(seconds=42),
        permits=0,
        successes=10,
        failures=2,
        failure_limit="1/2",
        window_size=2,
        updated_at=now - timedelta(minutes=5),
        held=held,
        window_calls=2,
        window_failures=2,
        window_slow=0,
        extra={},
    )


def test_the_table_shows_time_left_in_cooldown() -> None:
    """An OPEN row shows its cooldown left, its window's failures and lifetime counts."""
    [_, line] = status_table([_row("OPEN")], 80, datetime.now(timezone.utc), colour=False)
    assert line.split() == ["ns", "k", "OPEN", "2F/2", "10/2", "42.0s", "5m", "ago"]


def test_a_held_breaker_says_so() -> None:
    """A held OPEN breaker reads 'OPEN held' and has no cooldown to count down."""
    [_, line] = status_table(
        [_row("OPEN", held=True)], 80, datetime.now(timezone.utc), colour=False
    )
    assert line.split() == ["ns", "k", "OPEN", "held", "2F/2", "10/2", "-", "5m", "ago"]


def test_version_through_a_real_subprocess() -> None:
    """--version prints the installed package's version and exits 0."""
    from resilient_circuit import __version__

    proc = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"resilient-circuit-cli, version {__version__}"
