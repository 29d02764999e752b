"""How the library behaves in the shapes production processes take.

Forking servers and pools (policies built at import, workers forked after), imports
that must not connect, a database without the schema or without privileges, keys
that every process agrees on, configurations that disagree, and the connection
budget. Real processes, real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
APP_KEY = "tests._process_app.handle"


def app_env(dsn: str, **extra: str) -> dict[str, str]:
    """The environment of an application process using ``dsn``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    env.update(RC_DB_DSN=dsn, RC_NAMESPACE="default", **extra)
    return env


def run_scenario(name: str, dsn: str, **extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests._process_run", name],
        cwd=ROOT,
        env=app_env(dsn, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def breaker_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT resource_key, state, successes, failures FROM rc_circuit_breakers"
            " ORDER BY resource_key"
        ).fetchall()


# ---------------------------------------------------------------------------- forking


@pytest.mark.parametrize("admission", ["strict", "cached"])
def test_forked_children_reconnect_share_a_trip_and_leave_the_parent_working(
    pg_dsn: str, admission: str
) -> None:
    """os.fork() after the parent used its pool, LISTEN and flusher: children work, share a trip."""
    recording = "batched" if admission == "cached" else "immediate"
    result = run_scenario("fork", pg_dsn, APP_ADMISSION=admission, APP_RECORDING=recording)
    assert result["exit_codes"] == [0, 0, 0, 0]
    children = result["children"]
    assert len(children) == 4
    for child in children:
        assert child["calls"] == ["ok"] * 50, child
        assert child["logs"] == [], child
    assert children[0]["trip"] == "failed"
    polled = [child["saw_trip"] for child in children[1:]]
    assert all(seen[-1] == "rejected" and set(seen[:-1]) <= {"ok"} for seen in polled)
    parent = result["parent"]
    assert parent["before"] == ["ok"] * 5
    assert parent["after"] == ["rejected"] * 5
    assert parent["state"] == "OPEN"
    assert parent["logs"] == []
    # Every outcome of every process was recorded exactly once, on one shared row.
    [(key, state, successes, failures)] = breaker_rows(pg_dsn)
    assert (key, state) == (APP_KEY, "OPEN")
    assert (successes, failures) == (5 + 4 * 50 + sum(len(seen) - 1 for seen in polled), 1)


def test_a_fork_pool_maps_calls_without_deadlock(pg_dsn: str) -> None:
    """A multiprocessing pool (fork start method) forked after the parent called."""
    result = run_scenario("pool", pg_dsn)
    assert len(result["pids"]) >= 2
    assert result["calls"] == ["ok"] * 200
    assert result["logs"] == []
    assert result["parent"] == {"before": ["ok"] * 3, "after": ["ok"] * 3, "logs": []}
    [(key, state, successes, failures)] = breaker_rows(pg_dsn)
    assert (key, state, successes, failures) == (APP_KEY, "CLOSED", 206, 0)


def _request(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall((line + "\n").encode())
        return conn.makefile().readline().strip()


def test_a_preforking_server_shares_one_breaker_between_its_workers(pg_dsn: str) -> None:
    """Policy built at import in the master, workers forked after: one breaker for all."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests._process_run", "prefork"],
        cwd=ROOT,
        env=app_env(pg_dsn),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdin is not None
        started = json.loads(server.stdout.readline())
        port = started["port"]
        served = [_request(port, "ok").split() for _ in range(40)]
        assert {outcome for outcome, _ in served} == {"ok"}
        assert len({pid for _, pid in served}) >= 2
        assert _request(port, "fail").split()[0] == "failed"
        after = [_request(port, "ok").split() for _ in range(40)]
        assert {outcome for outcome, _ in after} == {"rejected"}
        assert len({pid for _, pid in after}) >= 2
        logs = [json.loads(_request(port, "logs")) for _ in range(8)]
        assert all(lines == [] for lines in logs), logs
    finally:
        _out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    [(key, state, successes, failures)] = breaker_rows(pg_dsn)
    assert (key, state, successes, failures) == (APP_KEY, "OPEN", 40, 1)
