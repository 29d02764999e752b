"""A fleet of real processes retrying through one RetryBudget shared in PostgreSQL."""

from __future__ import annotations

import multiprocessing
from typing import Any

import psycopg

from . import _budget_workers as workers

CTX = multiprocessing.get_context("spawn")
PROCESSES = 4
SECONDS = 2.0


def run_fleet(dsn: str, budget_name: str, *, dead: bool) -> list[dict[str, Any]]:
    start = CTX.Event()
    results = CTX.Queue()
    started = [
        CTX.Process(
            target=workers.call_dependency,
            args=(dsn, budget_name, dead, SECONDS, start, results),
            daemon=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for process in started:
            process.start()
        start.set()
        reports = [results.get(timeout=120) for _ in started]
    finally:
        for process in started:
            process.join(60)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        results.close()
        results.join_thread()
    return reports


def budget_row(dsn: str, name: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT first_attempts, retries, refusals,"
            " extract(epoch FROM updated_at - created_at)::float8 AS seconds"
            " FROM rc_retry_budgets WHERE namespace = %s AND name = %s",
            (workers.NAMESPACE, name),
        )
        found = cur.fetchone()
        assert found is not None
        return dict(zip([c.name for c in cur.description or ()], found, strict=True))


def test_fleet_retries_against_a_dead_dependency_stay_within_the_budget(pg_dsn: str) -> None:
    """Retries across all processes stay within ratio x first attempts + the floor over time."""
    reports = run_fleet(pg_dsn, "dead", dead=True)
    first = sum(r["first"] for r in reports)
    retries = sum(r["attempts"] - r["first"] for r in reports)
    assert all(r["other"] == 0 for r in reports), reports
    row = budget_row(pg_dsn, "dead")
    # Every first attempt was deposited, every retry was a granted withdrawal.
    assert row["first_attempts"] == first
    assert row["retries"] == retries
    floor = workers.FLOOR * (row["seconds"] + 1)  # one second's worth to start with
    assert retries <= float(workers.RATIO) * first + floor, (retries, first, row)
    # Without the budget each call would have been retried MAX_RETRIES times.
    assert retries < first * workers.MAX_RETRIES / 2, (retries, first)
    assert retries > 0
    assert row["refusals"] > 0


def test_fleet_still_retries_a_healthy_dependencys_rare_failures(pg_dsn: str) -> None:
    """One failure in twenty calls, under the ratio: every failure is retried, none gives up."""
    reports = run_fleet(pg_dsn, "healthy", dead=False)
    failures = sum(r["attempts"] // workers.HEALTHY_FAILURE_EVERY for r in reports)
    retries = sum(r["attempts"] - r["first"] for r in reports)
    assert sum(r["gave_up"] for r in reports) == 0, reports
    assert failures > 0
    assert retries == failures
    assert budget_row(pg_dsn, "healthy")["refusals"] == 0
