"""Retry budgets are forgotten, collected, listed and exported like breakers: the SQL
functions, the CLI's ``forget --budget`` and ``gc``, and the fleet collector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from resilient_circuit import _installer
from resilient_circuit.cli import main as cli
from resilient_circuit.instrumentation.prometheus import FleetCollector
from tests.conftest import PgRole

pytestmark = pytest.mark.postgres


def _budgets(dsn: str, *names: tuple[str, str]) -> None:
    """One deposit into each ``(namespace, name)`` budget, as the owner."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for namespace, name in names:
            conn.execute("SELECT rc_budget_deposit(%s, %s, 5)", [name, namespace])


def _listed(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT namespace, name FROM rc_budget_status()").fetchall()
    return [(ns, name) for ns, name in rows]


def _age(dsn: str, table: str, interval: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET updated_at = now() - %s::interval", [interval])


def test_forget_deletes_one_budget(pg_dsn: str) -> None:
    """rc_budget_forget deletes the budget it names (true) and nothing else; then false."""
    _budgets(pg_dsn, ("shop", "a"), ("shop", "b"), ("ops", "a"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        forgot = conn.execute("SELECT rc_budget_forget('a', 'shop')").fetchone()
        again = conn.execute("SELECT rc_budget_forget('a', 'shop')").fetchone()
    assert (forgot, again) == ((True,), (False,))
    assert _listed(pg_dsn) == [("ops", "a"), ("shop", "b")]


def test_gc_collects_idle_budgets_along_with_idle_breakers(pg_dsn: str) -> None:
    """rc_gc deletes budgets unused for p_idle (returning the breakers' count as before);
    rc_budget_gc alone returns how many budgets it deleted."""
    _budgets(pg_dsn, ("shop", "idle"), ("shop", "busy"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_record('svc', true, 'shop')")
    _age(pg_dsn, "rc_circuit_breakers", "2 days")
    _age(pg_dsn, "rc_retry_budgets", "2 days")
    _budgets(pg_dsn, ("shop", "busy"))  # used again: no longer idle
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT rc_gc('1 day')").fetchone() == (1,)
    assert _listed(pg_dsn) == [("shop", "busy")]
    _age(pg_dsn, "rc_retry_budgets", "2 days")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT rc_budget_gc('1 day')").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_idle"):
            conn.execute("SELECT rc_budget_gc('1 month')")
    assert _listed(pg_dsn) == []


def test_an_app_role_lists_forgets_and_collects_only_its_namespaces(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A role granted 'shop' (by pg-setup) sees, forgets and collects shop's budgets only."""
    role = pg_role()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _installer.install(conn, app_role=role, namespaces=["shop"])
    _budgets(pg_dsn, ("shop", "a"), ("shop", "b"), ("ops", "a"))
    app = role.dsn(pg_dsn)
    assert _listed(app) == [("shop", "a"), ("shop", "b")]
    with psycopg.connect(app, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rc_budget_forget('a', 'ops')")
        assert conn.execute("SELECT rc_budget_forget('a', 'shop')").fetchone() == (True,)
        assert conn.execute("SELECT rc_budget_gc('0 seconds')").fetchone() == (1,)
    assert _listed(pg_dsn) == [("ops", "a")]


def test_an_upgraded_install_grants_the_new_functions_to_budget_users(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role set up before these functions existed may call them after the upgrade."""
    role = pg_role()
    seed, *later = _installer.load_migrations()
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        # A 0.4.5 table, upgraded by a package that knew the migrations before these.
        conn.execute(seed.sql)
        with monkeypatch.context() as older_package:
            older = [seed, *(m for m in later if m.version < 10)]
            older_package.setattr(_installer, "load_migrations", lambda: older)
            _installer.install(conn, app_role=role, namespaces=["shop"])
        assert conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'rc_budget_status'"
        ).fetchone() == (0,)
        _installer.install(conn)  # the upgrade, with no --app-role
    _budgets(pg_empty_dsn, ("shop", "a"))
    assert _listed(role.dsn(pg_empty_dsn)) == [("shop", "a")]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_the_cli_forgets_a_budget_and_gc_counts_both(pg_dsn: str) -> None:
    """forget --budget deletes a budget (an unknown one is one error line); gc prints how
    many breakers and budgets it deleted."""
    _budgets(pg_dsn, ("shop", "retries"), ("shop", "old"))
    code, out = _run("forget", "retries", "--budget", "--namespace", "shop", "--dsn", pg_dsn)
    assert (code, out) == (0, "Forgot retry budget shop/retries.\n")
    code, out = _run("forget", "retries", "--budget", "--namespace", "shop", "--dsn", pg_dsn)
    assert code == 1
    assert out.startswith("Error: no retry budget shop/retries: check the name and --namespace")
    _age(pg_dsn, "rc_retry_budgets", "2 days")
    code, out = _run("gc", "--idle", "1 day", "--dsn", pg_dsn)
    assert (code, out.splitlines()) == (
        0,
        [
            "Deleted 0 CLOSED breaker(s) unchanged for 1 day.",
            "Deleted 1 retry budget(s) unused for 1 day.",
        ],
    )
    assert _listed(pg_dsn) == []


def _scrape(collector: FleetCollector) -> dict[tuple[str, tuple[Any, ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    found = {}
    for family in registry.collect():
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_the_fleet_collector_exports_the_budgets_an_app_role_may_see(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Balance, floor, first attempts and withdrawals of each budget of the role's namespaces."""
    role = pg_role()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _installer.install(conn, app_role=role, namespaces=["shop"])
        conn.execute("SELECT rc_budget_deposit('pay', 'shop', 15, 0.2, 0)")  # 3 tokens, decaying
        for _ in range(3):
            conn.execute("SELECT rc_budget_withdraw('pay', 'shop', 0)")
        conn.execute("SELECT rc_budget_deposit('hidden', 'ops', 1)")
    collector = FleetCollector(role.dsn(pg_dsn))
    try:
        found = _scrape(collector)
    finally:
        collector.close()
    at = (("budget", "pay"), ("namespace", "shop"))
    assert found[("resilient_circuit_fleet_budget_first_attempts_total", at)] == 15
    granted = ("resilient_circuit_fleet_budget_withdrawals_total", (*at, ("outcome", "granted")))
    refused = ("resilient_circuit_fleet_budget_withdrawals_total", (*at, ("outcome", "refused")))
    assert (found[granted], found[refused]) == (2, 1)
    assert found[("resilient_circuit_fleet_budget_min_per_second", at)] == 0
    assert 0 <= found[("resilient_circuit_fleet_budget_balance", at)] < 1
    budgets = {dict(labels).get("budget") for name, labels in found if "_budget_" in name}
    assert budgets == {"pay"}
