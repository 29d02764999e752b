"""Contention on one breaker: 8 processes calling through the same key at once.

For each PostgreSQL mode, with ``synchronous_commit`` on and off: total successful
calls per second and the p99 latency of a call. The modes in ``scale_modes`` (strict
admission with immediate recording, and the floor) also run with 1, 2 and 4 processes
(``SCALE_COUNTS``), so throughput can be read against the number of processes.
Every process has its own storage and connection(s), as separate application
processes would; the key's row is the point of contention. The server's floor is
the same load issuing a plain one-row ``UPDATE`` of one shared row (label
``floor``, plain psycopg); its second mode sends ``SELECT 1`` and then that ``UPDATE``,
two round trips as a strict call makes, so what any two-round-trip call reaches on one
row is measured in the same run.

What limits each run is read from the server: a sampler process polls
``pg_stat_activity`` every SAMPLE_EVERY_S and sorts the benchmark's backends into
waiting for the row lock, waiting for the commit's WAL flush, running, or idle
(waiting for the client: its network round trip and its own CPU time).

Run by run.py; by hand (with an interpreter that has the library and psycopg):

    python benchmarks/hot_key.py --label ours --dsn postgresql://postgres@127.0.0.1/rc_bench

Standard library only in the coordinator; children import the library under test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _harness import mode_tag

HERE = Path(__file__).resolve().parent
PROCESSES = 8
# The other process counts of the scaling runs (PROCESSES is the last point).
SCALE_COUNTS = (1, 2, 4)
SECONDS = 2.0
START_TIMEOUT_S = 60
SAMPLE_EVERY_S = 0.01

# pg_stat_activity of the benchmark's own backends, by what they are doing. The
# LISTEN connections of cached admission sit idle by design and are left out.
WAITS_QUERY = """
SELECT state, wait_event_type, wait_event
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'
"""
# The benchmark's backends (LISTEN ones included: they too spend the server's CPU).
PIDS_QUERY = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""
# The floor's modes: the raw UPDATE; the two round trips of a strict call at their least;
# and those two round trips as the security model (DESIGN §9) requires any function the
# application calls to be: SECURITY DEFINER PL/pgSQL with a pinned search_path, the first
# reading the row and the second updating it (worker_pg_floor.py creates them).
FLOOR_MODES = (
    "one-row UPDATE",
    "SELECT 1 + one-row UPDATE",
    "read + UPDATE in SECURITY DEFINER functions",
)
WAIT_KINDS = ("row lock", "commit (WAL flush)", "server CPU", "client (idle)", "other")


def run(
    python: str,
    label: str,
    dsn: str,
    modes: list[str],
    *,
    processes: int = PROCESSES,
    seconds: float = SECONDS,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    scale_modes: tuple[str, ...] = (),
    scale_counts: tuple[int, ...] = SCALE_COUNTS,
) -> dict[str, Any]:
    """Every mode x synchronous_commit setting; returns a worker-style report dict.

    Results are ``hot.MODE.SYNC`` at ``processes``; for the modes in ``scale_modes``
    also ``scale.MODE.SYNC.N`` for each N in ``scale_counts``.
    """
    report: dict[str, Any] = {"library": label, "results": {}, "errors": {}, "info": {}}
    runs = [(mode, processes, "hot") for mode in modes]
    runs += [(m, n, "scale") for m in modes if m in scale_modes for n in scale_counts]
    for mode, count, prefix in runs:
        for sync in ("on", "off"):
            name = f"{prefix}.{mode_tag(mode)}.{sync}"
            if prefix == "scale":
                name += f".{count}"
            try:
                result = _one(python, label, dsn, mode, sync, count, seconds, env, cwd)
                result["mode"] = mode
                report["results"][name] = result
            except Exception as exc:
                report["errors"][name] = str(exc)[:300]
    return report


def _one(
    python: str,
    label: str,
    dsn: str,
    mode: str,
    sync: str,
    processes: int,
    seconds: float,
    env: dict[str, str] | None,
    cwd: str | None,
) -> dict[str, Any]:
    key = f"bench-hot-{mode_tag(mode)}-{sync}-{os.getpid()}-{time.time_ns()}"
    argv = [python, str(HERE / "hot_key.py"), "--child", "--label", label, "--dsn", dsn]
    argv += ["--mode", mode, "--sync", sync, "--key", key, "--seconds", str(seconds)]
    sampler_argv = [python, str(HERE / "hot_key.py"), "--sample", "--label", label]
    sampler_argv += ["--dsn", dsn, "--seconds", str(seconds), "--key", key]
    children = [
        subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        for command in [argv] * processes + [sampler_argv]
    ]
    try:
        # Everyone connects and warms up first, then all start together: the
        # measured window is one of full contention, not of staggered start-up.
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(_failure(child, line))
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = []
        for child in children:
            out, err = child.communicate(timeout=seconds + START_TIMEOUT_S)
            if child.returncode != 0 or not out.strip():
                raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "no output")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        waits = outputs.pop()  # the sampler's, started last
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    samples = sorted(s for o in outputs for s in o["lat_us"])
    calls = sum(o["calls"] for o in outputs)
    applied = waits.get("applied")
    return {
        "kind": "throughput",
        "calls_per_s": sum(o["calls"] / o["elapsed_s"] for o in outputs),
        # Outcomes the key's row counted while the calls ran (batched recording applies
        # them later than it makes them), and what the processes still held at the end.
        "applied_per_s": None if applied is None else applied / waits["window_s"],
        "queued_at_start": sum(o.get("queued_at_start", 0) for o in outputs),
        "queued_at_end": sum(o.get("queued_at_end", 0) for o in outputs),
        "dropped": sum(o.get("dropped", 0) for o in outputs),
        # Other work on the machine competes for the same cores (1-minute average).
        "load_average": os.getloadavg()[0],
        "median_ns": samples[len(samples) // 2] * 1000 if samples else float("nan"),
        "p99_ns": _p99(samples) * 1000,
        "calls": calls,
        "errors": sum(o["errors"] for o in outputs),
        "processes": processes,
        "seconds": seconds,
        "waits": waits["shares"],
        "wait_samples": waits["samples"],
        # CPU per call: the client processes' own (all their threads) and the server's.
        "client_cpu_us_per_call": (
            1e6 * sum(o["client_cpu_s"] for o in outputs) / calls if calls else None
        ),
        "server_cpu_us_per_call": (
            1e6 * waits["server_cpu_s"] / calls if calls and waits.get("server_cpu_s") else None
        ),
        # Calls per second of the backends' own CPU: what one server core sustains.
        "server_cpu_s": waits.get("server_cpu_s"),
        "calls_per_server_cpu_s": (
            calls / waits["server_cpu_s"] if waits.get("server_cpu_s") else None
        ),
    }


def _p99(samples: list[int]) -> float:
    if not samples:
        return float("nan")
    return float(samples[min(len(samples) - 1, int(len(samples) * 0.99))])


def _failure(child: subprocess.Popen[str], line: str) -> str:
    try:
        _, err = child.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
    lines = [x for x in (err or "").strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"child did not start ({line.strip()!r})"


def child(label: str, dsn: str, mode: str, sync: str, key: str, seconds: float) -> None:
    from _harness import noop, pg_conninfo

    if sync == "off":
        dsn = pg_conninfo(dsn, options="-c synchronous_commit=off")
    watch = None
    storage: Any = None
    if label == "floor":
        import psycopg

        conn = psycopg.connect(dsn, autocommit=True)
        update = "UPDATE bench_floor SET n = n + 1 WHERE id = 1"
        if mode == FLOOR_MODES[1]:

            def call() -> Any:
                conn.execute("SELECT 1")
                return conn.execute(update)
        elif mode == FLOOR_MODES[2]:

            def call() -> Any:
                conn.execute("SELECT bench_floor_read(1)")
                return conn.execute("SELECT bench_floor_write(1)")
        else:

            def call() -> Any:
                return conn.execute(update)
    else:
        from fractions import Fraction

        from _harness import LogWatch

        watch = LogWatch("resilient_circuit")

        from worker_rc import Api, modes_for

        from resilient_circuit.storage import PostgresStorage

        api = Api()
        storage = PostgresStorage(dsn, namespace="bench")
        policy = api.policy(key, storage, Fraction(1, 10), **modes_for(api, label)[mode])
        call = policy(noop)
    for _ in range(20):
        call()
    if watch is not None and watch.first():
        raise RuntimeError(watch.first())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    queued_at_start = _queued(storage)

    lat_us: list[int] = []
    errors = 0
    clock = time.perf_counter_ns
    cpu_start = time.process_time()
    start = clock()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        before = now
        try:
            call()
        except Exception:
            errors += 1
        now = clock()
        lat_us.append((now - before) // 1000)
    elapsed = (now - start) / 1e9
    client_cpu_s = time.process_time() - cpu_start
    queued_at_end = _queued(storage)
    if watch is not None and watch.first():
        raise RuntimeError(watch.first())
    sys.stdout.write(
        json.dumps(
            {
                "calls": len(lat_us),
                "elapsed_s": elapsed,
                "lat_us": lat_us,
                "errors": errors,
                "client_cpu_s": client_cpu_s,
                "queued_at_start": queued_at_start,
                "queued_at_end": queued_at_end,
                "dropped": getattr(storage, "dropped_outcomes", 0),
            }
        )
        + "\n"
    )


def _queued(storage: Any) -> int:
    """Batched outcomes this process has made and not yet sent (0 for other modes)."""
    if storage is None or not hasattr(storage, "breakers"):
        return 0
    return sum(getattr(b, "queued", 0) for b in storage.breakers())


def classify(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    if not state or state.startswith("idle"):
        return "client (idle)"
    if wait_type == "Lock":
        return "row lock"
    if (wait_event or "").startswith("WAL") or wait_event == "SyncRep":
        return "commit (WAL flush)"
    if wait_type is None:
        return "server CPU"
    return "other"


def _outcomes(conn: Any, key: str) -> int | None:
    """Outcomes the key's row has counted in its lifetime (None: no such row or table)."""
    try:
        row = conn.execute(
            "SELECT successes + failures FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = 'bench'",
            (key,),
        ).fetchone()
    except Exception:  # the floor's database need not have the table
        return None
    return None if row is None else int(row[0])


def sampler(dsn: str, seconds: float, key: str) -> None:
    """Poll pg_stat_activity while the children run; print each kind's share, and the
    outcomes the key's row counted meanwhile."""
    import psycopg

    counts = dict.fromkeys(WAIT_KINDS, 0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WAITS_QUERY, prepare=True)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        # Every child has connected by now: "go" is sent once all are ready.
        pids = [row[0] for row in conn.execute(PIDS_QUERY)]
        cpu_before = backend_cpu_ns(pids)
        cpu_last = dict(cpu_before)
        outcomes_before, window_start = _outcomes(conn, key), time.monotonic()
        deadline = window_start + seconds
        while time.monotonic() < deadline:
            for row in conn.execute(WAITS_QUERY, prepare=True):
                counts[classify(*row)] += 1
            # Read while the backends live: a child's ends when it disconnects.
            cpu_last.update(backend_cpu_ns(pids))
            time.sleep(SAMPLE_EVERY_S)
        cpu_last.update(backend_cpu_ns(pids))
        outcomes_after, window_s = _outcomes(conn, key), time.monotonic() - window_start
    applied = (
        None
        if outcomes_before is None or outcomes_after is None
        else outcomes_after - outcomes_before
    )
    total = sum(counts.values())
    shares = {kind: n / total for kind, n in counts.items()} if total else {}
    used = sum(cpu_last[pid] - cpu_before[pid] for pid in cpu_before)
    server_cpu = used / 1e9 if cpu_before else None
    sys.stdout.write(
        json.dumps(
            {
                "samples": total,
                "shares": shares,
                "server_cpu_s": server_cpu,
                "applied": applied,
                "window_s": window_s,
            }
        )
        + "\n"
    )


def backend_cpu_ns(pids: list[int]) -> dict[int, int]:
    """Nanoseconds on the CPU each server process has used, for those still readable.

    Read from /proc, so only for a server on this machine that this user may inspect;
    the calls a core sustains are the calls made per second of this CPU.
    """
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as stat:
                found[pid] = int(stat.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True, help="ours | rc086 | floor")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", action="append", help="a mode name; default: all")
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument(
        "--scale", action="store_true", help=f"also run every mode with {SCALE_COUNTS} processes"
    )
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sync", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="bench-hot", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.label, args.dsn, args.mode[0], args.sync, args.key, args.seconds)
        return
    if args.sample:
        sampler(args.dsn, args.seconds, args.key)
        return
    if args.mode:
        modes = args.mode
    elif args.label == "floor":
        modes = list(FLOOR_MODES)
    else:
        from worker_rc import Api, modes_for

        modes = list(modes_for(Api(), args.label))
    report = run(
        sys.executable,
        args.label,
        args.dsn,
        modes,
        processes=args.processes,
        seconds=args.seconds,
        scale_modes=tuple(modes) if args.scale else (),
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
