"""What a call costs the PostgreSQL server's CPU, statement by statement, in each mode.

Wall-clock latency on a shared machine moves with everyone else's load; the CPU time
the server process spends on a statement moves far less. For each scenario this opens
one autocommit connection, asks for its backend's pid, runs the scenario's statements
CALLS times, and reads the backend's own CPU time before and after from
``/proc/PID/schedstat`` (nanoseconds on the CPU: parse, plan, execute, commit and the
socket's system calls; the WAL flush's wait is not CPU). One server core sustains
``1 / (CPU per call)`` calls per second of that scenario: the figure
``docs/capacity.md`` scales to a fleet.

The server must run on this machine, readable by this user. Standard library plus
psycopg; the schema installed by ``pg-setup`` in the database of ``--dsn``, and the
floor table of ``worker_pg_floor.py prepare``.

    .venv/bin/python benchmarks/server_cpu.py --dsn postgresql://postgres@127.0.0.1/rc_bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import psycopg

CALLS = 1000
REPEAT = 3
BATCH = 1000  # outcomes per rc_record_many statement in the batched scenario

KEY = "bench-server-cpu"
TIMED_KEY = "bench-server-cpu-timed"  # configured with a 60 s time window in main()
NS = "bench"
ACQUIRE = "SELECT permitted, state, generation, retry_after FROM rc_try_acquire(%s, %s)"
RECORD = "SELECT state, generation FROM rc_record(%s, true, %s, NULL)"
RECORD_MANY = "SELECT state, generation FROM rc_record_many(%s, %s, %s::boolean[], NULL)"
RECORD_RUNS = (
    "SELECT state, generation FROM rc_record_runs(%s, %s, %s::integer[], %s::boolean[], NULL)"
)
SELECT1 = "SELECT 1"
UPDATE = "UPDATE bench_floor SET n = n + 1 WHERE id = 1"
# The least any two functions of the security model cost (worker_pg_floor.py makes them).
DEFINER_READ = "SELECT bench_floor_read(1)"
DEFINER_WRITE = "SELECT bench_floor_write(1)"

# name: (statements with their parameters, outcomes per repetition)
SCENARIOS: dict[str, tuple[list[tuple[str, tuple[Any, ...]]], int]] = {
    "floor: SELECT 1": ([(SELECT1, ())], 1),
    "floor: one-row UPDATE": ([(UPDATE, ())], 1),
    "floor: SELECT 1 + one-row UPDATE": ([(SELECT1, ()), (UPDATE, ())], 1),
    "floor: read + UPDATE in SECURITY DEFINER functions": (
        [(DEFINER_READ, ()), (DEFINER_WRITE, ())],
        1,
    ),
    "rc_try_acquire (CLOSED)": ([(ACQUIRE, (KEY, NS))], 1),
    "rc_record (success, CLOSED, time window of 60 s)": ([(RECORD, (TIMED_KEY, NS))], 1),
    "rc_record (success, CLOSED)": ([(RECORD, (KEY, NS))], 1),
    "strict/immediate: rc_try_acquire + rc_record": (
        [(ACQUIRE, (KEY, NS)), (RECORD, (KEY, NS))],
        1,
    ),
    "cached/immediate: rc_record": ([(RECORD, (KEY, NS))], 1),
    f"batched: rc_record_many of {BATCH} (per outcome)": (
        [(RECORD_MANY, (KEY, NS, [True] * BATCH))],
        BATCH,
    ),
    # What batched recording sends: a healthy flush is one run, whatever its length.
    f"batched: rc_record_runs, one run of {BATCH} (per outcome)": (
        [(RECORD_RUNS, (KEY, NS, [BATCH], [True]))],
        BATCH,
    ),
    f"batched: rc_record_runs, one run of {10 * BATCH} (per outcome)": (
        [(RECORD_RUNS, (KEY, NS, [10 * BATCH], [True]))],
        10 * BATCH,
    ),
}


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


def measure(dsn: str, statements: list[tuple[str, tuple[Any, ...]]], outcomes: int) -> float:
    """Server CPU nanoseconds per outcome: the median of REPEAT runs of CALLS calls."""
    calls = max(20, CALLS // outcomes)
    per_outcome = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        for _ in range(50):  # plans cached, PL/pgSQL compiled, row in place
            for query, params in statements:
                conn.execute(query, params, prepare=True)
        for _ in range(REPEAT):
            before = cpu_ns(pid)
            for _ in range(calls):
                for query, params in statements:
                    conn.execute(query, params, prepare=True)
            per_outcome.append((cpu_ns(pid) - before) / (calls * outcomes))
    return statistics.median(per_outcome)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        conn.execute(
            "SELECT * FROM rc_configure(%s, %s, 1, 2, p_window_duration => '60 seconds')",
            (TIMED_KEY, NS),
        )
    results: dict[str, float] = {}
    for name, (statements, outcomes) in SCENARIOS.items():
        results[name] = measure(args.dsn, statements, outcomes)
    if args.json:
        print(json.dumps({"server_version": version, "time": time.time(), "cpu_ns": results}))
        return
    print(f"PostgreSQL {version}: server CPU per call (median of {REPEAT} runs)")
    print("| Scenario | server CPU per call | calls/s one core sustains |")
    print("|---|---|---|")
    for name, ns in results.items():
        print(f"| {name} | {ns / 1000:.1f} µs | {1e9 / ns:,.0f} |")


if __name__ == "__main__":
    main()
