"""Benchmarks: resilient_circuit against its peers, in one run, as one table.

    .venv/bin/python benchmarks/run.py [--output docs/benchmarks.md] [--dsn DSN]

Each peer is installed at a pinned version (PEERS) into its own virtual environment
under benchmarks/.venvs/ (created on first use, reused while its pins are unchanged),
and every measurement runs in a subprocess of the right environment: a worker script
that prints one JSON line. resilient_circuit 0.8.6 shares our import name, which is
why it gets an environment of its own. This library is measured with the interpreter
running this script, importing the package from this repository.

The run prints one table, then the targets (targets.py) with the measured value,
the bound and met / NOT met, and writes both, with a description of the machine, a
profile of where the time goes and the method, to --output. Whatever cannot be
measured (a peer that fails to install, a server that is down, an API not there yet)
shows as n/a with the reason below the table; the rest of the run goes on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hot_key
import pg_extra
import targets
from _harness import mode_tag
from targets import fmt_ns

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"

# Exact pins, direct and transitive, so that two runs measure the same code.
PEERS: dict[str, tuple[str, ...]] = {
    "pybreaker": ("pybreaker==1.4.1", "redis==8.1.0"),
    "circuitbreaker": ("circuitbreaker==2.1.3",),
    "tenacity": ("tenacity==9.2.1",),
    "stamina": ("stamina==26.1.0", "tenacity==9.2.1"),
    "backoff": ("backoff==2.2.1",),
    "rc086": (
        "resilient_circuit==0.8.6",
        "typing_extensions==4.16.0",
        "psycopg[binary]==3.3.9",
        "psycopg-binary==3.3.9",
        "python-dotenv==1.2.4",
    ),
    # Plain psycopg, the same version as our dev pin: database set-up and the floors.
    "psycopg": ("psycopg[binary]==3.3.9", "psycopg-binary==3.3.9", "typing_extensions==4.16.0"),
}

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
OUR_DB = "rc_bench"
OLD_DB = "rc_bench_086"
WORKER_TIMEOUT_S = 600


# --------------------------------------------------------------------------- set-up


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def site_packages(name: str) -> list[Path]:
    return sorted((VENVS / name).glob("lib/python*/site-packages"))


def ensure_venv(name: str, requirements: tuple[str, ...], log: Any) -> str | None:
    """Create or refresh one peer's environment; returns an error text, or None."""
    path = VENVS / name
    stamp = path / ".bench-pins"
    wanted = json.dumps({"python": platform.python_version(), "pins": list(requirements)})
    if stamp.exists() and stamp.read_text() == wanted and venv_python(name).exists():
        return None
    if path.exists():
        shutil.rmtree(path)
    steps = [
        [sys.executable, "-m", "venv", str(path)],
        [str(venv_python(name)), "-m", "pip", "install", "--quiet", *requirements],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            lines = (done.stderr or done.stdout).strip().splitlines()
            return f"install failed: {lines[-1] if lines else done.returncode}"
    stamp.write_text(wanted)
    log(f"installed {name}: {' '.join(requirements)}")
    return None


def ensure_venvs(log: Any) -> dict[str, str]:
    """All environments, a few at a time (network-bound); returns errors by name."""
    VENVS.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(ensure_venv, name, reqs, log) for name, reqs in PEERS.items()}
    return {name: err for name, f in futures.items() if (err := f.result()) is not None}


def clean_env(ours: bool, rounds: int) -> dict[str, str]:
    """The environment of a worker: no RC_* settings of the caller's leak in.

    Ours imports the package from this repository (PYTHONPATH); the peers' workers
    must see only their own environment's packages.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_") and k != "PYTHONPATH"}
    env["RC_BENCH_ROUNDS"] = str(rounds)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if ours:
        env["PYTHONPATH"] = str(REPO)
    return env


class Runner:
    def __init__(self, rounds: int, verbose: bool) -> None:
        self.rounds = rounds
        self.verbose = verbose
        self.workdir = tempfile.mkdtemp(prefix="rc-bench-")  # no .env above it

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def worker(self, python: str | Path, script: str, *args: str, ours: bool) -> dict[str, Any]:
        """Run one worker; its JSON, or a report whose every scenario failed."""
        started = time.monotonic()
        argv = [str(python), str(HERE / script), *args]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=clean_env(ours, self.rounds),
                cwd=self.workdir,
                timeout=WORKER_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return failed(f"{script} timed out after {WORKER_TIMEOUT_S} s")
        # Never the arguments: a DSN may carry a password.
        where = Path(python).parent.parent.name if VENVS in Path(python).parents else "ours"
        self.log(f"{script} [{where}]: {time.monotonic() - started:.1f} s")
        if self.verbose and done.stderr.strip():
            print(done.stderr, file=sys.stderr)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            err = done.stderr.strip().splitlines()
            return failed(f"{script} failed: {err[-1] if err else done.returncode}")
        try:
            return json.loads(lines[-1])  # type: ignore[no-any-return]
        except json.JSONDecodeError:
            return failed(f"{script} printed no JSON")

    def command(self, argv: list[str], env: dict[str, str]) -> str | None:
        """Run a set-up command; an error text, or None."""
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                cwd=self.workdir,
                timeout=300,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode == 0:
            return None
        lines = [x for x in (done.stderr + done.stdout).strip().splitlines() if x.strip()]
        return lines[-1] if lines else f"exit status {done.returncode}"


def failed(reason: str) -> dict[str, Any]:
    return {"results": {}, "errors": {"*": reason}, "info": {}}


def our_pg_setup(runner: Runner, dsn: str) -> str | None:
    """``resilient-circuit-cli pg-setup`` of this repository, into the benchmark database."""
    cli = Path(sys.executable).parent / "resilient-circuit-cli"
    if cli.exists():
        argv = [str(cli)]
    else:  # the package is importable from the tree but not installed in this interpreter
        argv = [sys.executable, "-c", "from resilient_circuit.cli import main; main()"]
    err = runner.command([*argv, "pg-setup", "--yes", "--dsn", dsn], clean_env(True, 0))
    return f"pg-setup: {err}" if err else None


def old_pg_setup(runner: Runner, dsn: str) -> str | None:
    """0.8.6's ``pg-setup``, which reads its DSN from RC_DB_DSN only."""
    env = clean_env(False, 0)
    env["RC_DB_DSN"] = dsn
    cli = VENVS / "rc086" / "bin" / "resilient-circuit-cli"
    err = runner.command([str(cli), "pg-setup", "--yes"], env)
    return f"pg-setup (0.8.6): {err}" if err else None


# --------------------------------------------------------------------------- repeats


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the same worker run several times.

    An in-process timing depends on the process as much as on the code (where its
    objects landed, what the sibling core was doing while it ran), so the in-memory
    workers run several times, interleaved with each other, and each scenario keeps
    the run with the median result (its IQR with it); "runs" gives the range.
    """
    if len(reports) == 1:
        return reports[0]
    merged: dict[str, Any] = {k: v for k, v in reports[0].items() if k not in ("results", "errors")}
    merged["results"], merged["errors"] = {}, {}
    keys = {k for r in reports for k in r["results"]}
    for key in sorted(keys):
        found = [r["results"][key] for r in reports if key in r["results"]]
        kind = found[0].get("kind")
        if kind in ("overhead", "ratio", "latency"):
            field = {"overhead": "ns", "ratio": "ratio", "latency": "median_ns"}[kind]
            found.sort(key=lambda res, f=field: res[f])
            chosen = dict(found[(len(found) - 1) // 2])
            chosen["runs"] = [res[field] for res in found]
        else:
            chosen = found[0]
        merged["results"][key] = chosen
    for r in reports:
        for key, err in r["errors"].items():
            if key not in merged["results"]:
                merged["errors"].setdefault(key, err)
    return merged


# --------------------------------------------------------------------------- table


def fmt_bytes(n: float) -> str:
    if n >= 10 * 1024 * 1024:
        return f"{n / 1024 / 1024:,.1f} MiB"
    return f"{n:,.0f} B"


def value_of(result: dict[str, Any]) -> float:
    kind = result["kind"]
    if kind == "overhead":
        return float(result["ns"])
    if kind == "latency":
        return float(result["median_ns"])
    if kind == "throughput":
        return float(result["calls_per_s"])
    if kind == "count":
        return float(result["per_call"])
    return float(result["bytes"])


def cells(result: dict[str, Any]) -> tuple[str, str, str]:
    """(value, spread or p99, round trips) of one result."""
    kind = result["kind"]
    if kind == "overhead":
        spread = f"IQR {fmt_ns(result['q1_ns'])} … {fmt_ns(result['q3_ns'])}"
        return fmt_ns(result["ns"]), spread, ""
    if kind == "count":
        return f"{result['per_call']:.2f}", f"{result['sleeps']} in {result['calls']} calls", ""
    if kind == "check":
        made, found = result["expected"], result["found"]
        value = f"{found[0]:,} + {found[1]:,} of {made[0]:,} + {made[1]:,}"
        return value, f"{result['queued_at_exit']:,} still queued at exit", ""
    rt = ""
    if "rt_per_call" in result:
        per = result["rt_per_call"]
        rt = f"{per:.2f}" if per >= 0.01 or per == 0 else f"{per:.1e}"
        if result.get("conn_per_call"):
            rt += f" (+{result['conn_per_call']:.2f} connect)"
    if kind == "latency":
        spread = f"p99 {fmt_ns(result['p99_ns'])}"
        if "lower_median_ns" in result:
            spread += f"; after the peer's reply: {fmt_ns(result['lower_median_ns'])}"
            spread += f", p99 {fmt_ns(result['lower_p99_ns'])}"
        return fmt_ns(result["median_ns"]), spread, rt
    if kind == "throughput":
        return f"{result['calls_per_s']:,.0f} calls/s", f"p99 {fmt_ns(result['p99_ns'])}", rt
    extra = f"total {fmt_bytes(result['total'])}" if "total" in result else ""
    return fmt_bytes(result["bytes"]), extra, ""


def ratio(result: dict[str, Any], base: dict[str, Any] | None) -> str:
    """How this row compares with ours: '3.1x slower', '2.0x less memory', …"""
    if base is None or result is base or result["kind"] in ("count", "check"):
        return ""
    if base["kind"] != result["kind"]:
        return ""
    v, b = value_of(result), value_of(base)
    if result["kind"] == "throughput":
        v, b = b, v  # fewer calls per second is "slower"
    if v <= 0 or b <= 0 or (result["kind"] == "overhead" and min(v, b) < 5):
        return "—"  # below the noise of the subtraction: a ratio would be meaningless
    r = v / b
    if result["kind"] == "bytes":
        return f"{r:.1f}x more" if r >= 1 else f"{1 / r:.1f}x less"
    return f"{r:.1f}x slower" if r >= 1 else f"{1 / r:.1f}x faster"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.notes: list[str] = []

    def note(self, reason: str) -> str:
        reason = " ".join(reason.split())
        if reason not in self.notes:
            self.notes.append(reason)
        return f"n/a ({self.notes.index(reason) + 1})"

    def add(
        self,
        benchmark: str,
        library: str,
        report: dict[str, Any],
        key: str,
        base: dict[str, Any] | None = None,
    ) -> None:
        result = report["results"].get(key)
        if result is None:
            self.rows.append((benchmark, library, self.note(reason_for(report, key)), "", "", ""))
            return
        value, spread, rt = cells(result)
        self.rows.append((benchmark, library, value, spread, rt, ratio(result, base)))

    def markdown(self, ours_label: str) -> str:
        head = ("Benchmark", "Library", "Result", "Spread / p99", "Round trips / call")
        head += (f"vs {ours_label}",)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        previous = None
        for row in self.rows:
            shown = ("", *row[1:]) if row[0] == previous else row
            previous = row[0]
            lines.append("| " + " | ".join(shown) + " |")
        if self.notes:
            lines.append("")
            lines.append("n/a:")
            lines.extend(f"{i}. {n}" for i, n in enumerate(self.notes, 1))
        return "\n".join(lines)


def reason_for(report: dict[str, Any], key: str) -> str:
    """Why a scenario has no result: its own error, its group's, or the worker's."""
    errors = report["errors"]
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        for candidate in (prefix, prefix + ".*"):
            if candidate in errors:
                return str(errors[candidate])
    return str(errors.get("*") or "not measured")


def build_table(out: dict[str, dict[str, Any]], labels: dict[str, str]) -> Table:
    t = Table()
    ours = out["ours"]

    def base(key: str) -> dict[str, Any] | None:
        return ours["results"].get(key)  # type: ignore[no-any-return]

    breakers = ("ours", "rc086", "pybreaker", "circuitbreaker")
    for key, title in (
        ("breaker.success", "Breaker in memory: successful call (overhead)"),
        ("breaker.failure", "Breaker in memory: counted failure while CLOSED (overhead)"),
        ("breaker.rejection", "Breaker in memory: rejection while OPEN (overhead)"),
    ):
        for w in breakers:
            t.add(title, labels[w], out[w], key, base(key))
        if key == "breaker.success":
            t.add(title, "floor: a pass-through decorator", ours, "floor.decorator", base(key))
    for outcome in ("success", "failure"):
        for size in (10, 1000):
            key = f"window.{size}.{outcome}"
            what = "successful call" if outcome == "success" else "counted failure"
            title = f"Window {size}: {what} (overhead; both windows in the same rounds)"
            for w in ("ours", "rc086"):
                t.add(title, labels[w], out[w], key, base(f"window.10.{outcome}"))
    retriers = ("ours", "rc086", "tenacity", "stamina", "backoff")
    for key, title in (
        ("retry.success", "Retry: success on first attempt (overhead)"),
        ("retry.one_failure", "Retry: one failure, then success, zero delay (overhead)"),
        ("retry.sleeps", "Retry: sleep() calls per call with one zero-delay retry"),
    ):
        for w in retriers:
            t.add(title, labels[w], out[w], key, base(key))

    pg = out["ours_pg"]
    floor = out["floor"]
    our_modes = pg["info"].get("pg_modes") or ["strict/immediate"]
    old_modes = out["rc086_pg"]["info"].get("pg_modes") or ["default (refresh 1 s)"]
    pg_base = mode_tag(our_modes[0])
    for outcome, title in (
        ("success", "PostgreSQL: successful call (latency)"),
        ("rejection", "PostgreSQL: rejection while OPEN (latency)"),
    ):
        b = pg["results"].get(f"pg.{pg_base}.{outcome}")
        for mode in our_modes:
            t.add(title, f"{labels['ours']} · {mode}", pg, f"pg.{mode_tag(mode)}.{outcome}", b)
        for mode in old_modes:
            key = f"pg.{mode_tag(mode)}.{outcome}"
            t.add(title, f"{labels['rc086']} · {mode}", out["rc086_pg"], key, b)
    b = pg["results"].get(f"pg.{pg_base}.success")
    for key, what in (
        ("floor.select1", "SELECT 1"),
        ("floor.update", "one-row UPDATE"),
        ("floor.update_async", "one-row UPDATE, synchronous_commit=off"),
        ("floor.connect", "connect + SELECT 1 + close"),
    ):
        t.add(
            "PostgreSQL floor, open connection (latency)",
            f"{labels['floor']} · {what}",
            floor,
            key,
            b,
        )
    for key, what in (
        ("pg.staleness.idle", "idle process"),
        ("pg.staleness.busy", "process busy calling (GIL held)"),
    ):
        t.add(
            "PostgreSQL cached admission: a peer's trip (rc_force from another process) "
            "until this process's verdict changes (latency, from the peer sending it)",
            f"{labels['ours']} · {what}",
            pg,
            key,
        )
    title = "PostgreSQL cached/batched, one process calling as fast as it can"
    t.add(f"{title} (throughput; round trips = transactions)", labels["ours"], pg, "pg.batched")
    batched = pg["results"].get("pg.batched")
    added_report = {
        "results": {"added": batched["added"]} if batched else {},
        "errors": pg["errors"],
    }
    t.add(f"{title}: time added to a call over in-memory", labels["ours"], added_report, "added")
    t.add(
        "PostgreSQL batched: a process makes 50,000 calls (1 in 10 failing) and exits normally "
        "without flushing; successes + failures in the row afterwards",
        labels["ours"],
        pg,
        "pg.exit_flush",
    )

    pyb = out["pybreaker_redis"]
    for key, what in (
        ("redis.floor.ping", "floor: PING"),
        ("redis.floor.incr", "floor: INCR"),
        ("redis.pybreaker.success", "CircuitRedisStorage: successful call"),
        ("redis.pybreaker.rejection", "CircuitRedisStorage: rejection while OPEN"),
    ):
        lib = labels["redis"] if key.startswith("redis.floor") else labels["pybreaker"]
        t.add("Redis, for comparison (latency)", f"{lib} · {what}", pyb, key, b)

    hot = {w: out[f"hot_{w}"] for w in ("ours", "rc086", "floor")}
    hot_modes = {"ours": our_modes, "rc086": old_modes[:1], "floor": list(hot_key.FLOOR_MODES)}
    for sync in ("on", "off"):
        title = f"Hot key, {hot_key.PROCESSES} processes, synchronous_commit={sync} (throughput)"
        b = hot["ours"]["results"].get(f"hot.{pg_base}.{sync}")
        for w in ("ours", "rc086", "floor"):
            for mode in hot_modes[w]:
                key = f"hot.{mode_tag(mode)}.{sync}"
                t.add(title, f"{labels[w]} · {mode}", hot[w], key, b)

    for key, title in (
        ("mem.window100", "Memory: one breaker, window 100, full (tracemalloc)"),
        ("mem.100k", "Memory: per breaker among 100,000, window 100 (RSS growth)"),
        ("mem.pg_row", "Memory: one breaker's PostgreSQL row (pg_column_size)"),
    ):
        b = out["mem_ours"]["results"].get(key)
        for w in ("ours", "rc086"):
            t.add(title, labels[w], out[f"mem_{w}"], key, b)
    return t


# What the largest share of a hot-key run's samples means.
LIMITS = {
    "row lock": "the row lock: each write waits for the one before it to commit",
    "commit (WAL flush)": "the commit: waiting for the WAL to reach the disk",
    "server CPU": "the server's CPU: the functions themselves",
    "client (idle)": "the clients: their CPU and round trips (the backends wait for them)",
    "other": "another wait",
}


def hot_waits(out: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    """What the server's backends were doing during each hot-key run (sampled)."""
    head = ("Run", "calls/s", *hot_key.WAIT_KINDS, "Limited by")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in ("ours", "rc086", "floor"):
        for key, result in out[f"hot_{w}"]["results"].items():
            waits = result.get("waits") or {}
            if not waits:
                continue
            shares = [f"{100 * waits.get(kind, 0):.0f}%" for kind in hot_key.WAIT_KINDS]
            top = LIMITS[max(hot_key.WAIT_KINDS, key=lambda kind, w=waits: w.get(kind, 0))]
            sync = key.split(".")[2]
            run = f"{labels[w]} · {result.get('mode', '')} · sync {sync}"
            if key.startswith("scale."):
                count = result["processes"]
                run += f" · {count} process" + ("es" if count > 1 else "")
            lines.append(
                f"| {run} | {result['calls_per_s']:,.0f} | " + " | ".join(shares) + f" | {top} |"
            )
    return "\n".join(lines)


def hot_scaling(out: dict[str, dict[str, Any]], labels: dict[str, str], base: str) -> str:
    """Strict calls/s on one key against the raw one-row UPDATE's, by process count."""
    ours = out["hot_ours"]["results"]
    floor = out["hot_floor"]["results"]
    tag = mode_tag(base)
    head = ("Processes", "synchronous_commit", f"{base} calls/s", "one-row UPDATE calls/s")
    head += ("ratio", "CPU per call: client + server", f"{base}: limited by")
    head += ("UPDATE: limited by",)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sync in ("on", "off"):
        for count in (*hot_key.SCALE_COUNTS, hot_key.PROCESSES):
            suffix = "" if count == hot_key.PROCESSES else f".{count}"
            prefix = "hot" if count == hot_key.PROCESSES else "scale"
            a = ours.get(f"{prefix}.{tag}.{sync}{suffix}")
            f = floor.get(f"{prefix}.one-row-UPDATE.{sync}{suffix}")
            if not a or not f:
                continue
            ratio = a["calls_per_s"] / f["calls_per_s"] if f["calls_per_s"] else float("nan")
            lines.append(
                f"| {count} | {sync} | {a['calls_per_s']:,.0f} | {f['calls_per_s']:,.0f} | "
                f"{ratio:.2f} | {_cpu(a)} against {_cpu(f)} | {_limit(a)} | {_limit(f)} |"
            )
    return "\n".join(lines)


def _cpu(result: dict[str, Any]) -> str:
    client = result.get("client_cpu_us_per_call")
    server = result.get("server_cpu_us_per_call")
    if client is None:
        return "?"
    return f"{client:.0f} + " + ("?" if server is None else f"{server:.0f}") + " µs"


def _limit(result: dict[str, Any]) -> str:
    waits = result.get("waits") or {}
    if not waits:
        return "?"
    top = max(hot_key.WAIT_KINDS, key=lambda kind: waits.get(kind, 0))
    return f"{top} ({100 * waits.get(top, 0):.0f}%)"


# --------------------------------------------------------------------------- machine


def sleep0_ns() -> float:
    """What ``time.sleep(0)`` costs here: a retry that "waits" zero seconds may pay it."""
    samples = []
    for _ in range(200):
        start = time.perf_counter_ns()
        time.sleep(0)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def machine(
    out: dict[str, dict[str, Any]], dsn_note: str, load: str, sleep0: float
) -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = f"{os.cpu_count()} logical" + (f", {usable} usable" if usable else "")
    prep = out["prepare"]["info"]
    rows = [
        ("Date (UTC)", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", cpu),
        ("Cores", cores),
        ("Memory", memory),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("PostgreSQL", prep.get("server_version", "n/a") + f" ({dsn_note})"),
        ("Redis", out["pybreaker_redis"]["info"].get("redis_version", "n/a")),
        ("psycopg", out["floor"].get("version") or "n/a"),
        ("Load average (1, 5, 15 min)", load),
        ("time.sleep(0)", fmt_ns(sleep0)),
    ]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode == 0:
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        )
        suffix = " (with uncommitted changes)" if dirty.stdout.strip() else ""
        rows.append(("Commit", commit.stdout.strip() + suffix))
    return rows


METHOD = """\
How to read it:

- **Overhead** is the time of a protected no-op call minus the time of the bare no-op,
  both called in the same tight loop (`time.perf_counter_ns`, garbage collector off,
  a count calibrated to about 2 ms a round), {rounds} rounds interleaved; the median
  of the protected rounds minus the median of the bare ones. Short rounds are rarely
  preempted, so the median holds up when the machine is busy. "IQR" is the middle
  half of the per-round differences. Below ~5 ns a ratio is noise and is not shown.
- **Repeats**: this machine's speed drifts (a bare decorator's cost moves by up to 2x
  from one second to the next), so every in-memory worker runs {repeat} times,
  interleaved with the others, and each row shows the run with the median result. A
  target that is an absolute time in memory is judged on the fastest run, as `timeit`
  advises; one that compares libraries, on ratios taken in the same rounds.
- **Head to head**: the targets that compare this library's in-memory paths with
  circuitbreaker's and pybreaker's take their verdict from `head_to_head.py`, which
  runs the three breakers in one process, interleaved in the same rounds (the peers'
  pure-Python packages imported from their environments), and compares them by the
  median of per-round ratios; it runs {repeat} times too. Everything interleaved
  costs a little more per call than in the table's dedicated runs (each callable
  runs after others), for all three alike.
- **Counted failure**: breakers with a ratio limit trip on a pure failure stream, so
  every breaker gets the same alternating failure/success stream (configured never to
  trip), and the failure's share is `2 x stream - success`, the success-only stream
  going through a breaker of the same configuration in the same round. For a breaker
  with a window this charges the failure with the success after it, which has to
  shift the failure through the window. The stream's baseline is the same function
  raising, caught by the same loop. **Rejection** is measured against the bare no-op
  and includes raising and catching the library's rejection error.
- **Window N**: a breaker whose window holds N outcomes (failure limit (N-1)/N), full;
  both windows' calls and streams run in the same rounds, and the target's ratio is
  the median of the per-round ratios.
- **Retry, one failure**: the function fails once then succeeds; the baseline is the
  same two attempts under a hand-written `try/except`. Every library is set to at most
  4 attempts and zero delay (stamina with its per-retry log hook turned off). The
  sleeps row counts calls of `time.sleep` over 200 such calls.
- **PostgreSQL / Redis latency**: each call timed on its own, on one connection or
  pool, against a server on this machine; median and p99. The targets that compare a
  strict call with the floors or with pybreaker on Redis use the PostgreSQL breakdown,
  where all of them run in the same rounds (the table's rows are separate runs).
  **Round trips / call** are counted by a TCP proxy as client→server→client turns,
  over separate calls (latency is never measured through the proxy); "+n connect"
  counts new connections per call. Floors are plain psycopg on an open autocommit
  connection.
- **Transactions per call** (batched recording) are the proxy's round trips: every
  statement the store sends is its own autocommit transaction, one round trip each
  (the LISTEN connection's notifications are the server speaking unprompted, not
  turns). The proxy counts exactly and at once, only this process's connections;
  `pg_stat_database.xact_commit` counts every client of the database, and backends
  report it only every second or so, or when they exit.
- **Staleness**: another process commits `rc_force(key, 'OPEN')` on its own
  connection, {trials} times; timed from just before it sends the statement (the
  commit happens inside it) to the moment this process's LISTEN thread has applied
  the notification to the store, on the same monotonic clock. "After the peer's
  reply" starts the clock when its statement returned instead, after the commit: the
  true figure lies between the two. "Busy": this process's main thread calls the
  protected function in a loop throughout, so the LISTEN thread must win the GIL.
- **Batched throughput**: cached/batched calls and in-memory calls alternate in
  {slice:g} s slices for {seconds:g} s each, in one thread; the flusher thread runs
  meanwhile (its share of the GIL is in the calls' time). The time added is the
  median of neighbouring slices' per-call differences. p99 is of single calls.
- **Rejection while OPEN, every mode**: each mode's rejection, an in-memory one and
  the bare exception (built and raised alone) run in the same rounds, in 9 blocks a
  second apart. The 1 µs target, an absolute bound, takes the slowest mode of the
  fastest block, as timeit advises for absolute figures (the median block is shown
  beside it). This machine's speed moves in phases of seconds, by 1.6-1.8x for any
  code (a bare `raise` included): one process's own rounds can fall wholly in a slow
  phase, so a mode timed alone, at another moment, is shown beside it but not judged.
- **Time window's floor**: a count-window policy around a function that reads
  `time.monotonic_ns` once, in the same rounds: a count window's success plus the one
  clock read a time window's success cannot do without.
- **Hot key**: {procs} processes on one breaker key (the floor: on one row), started
  together, {hot_seconds:g} s each; calls/s summed over processes, p99 over all calls.
  What limited it is sampled from `pg_stat_activity` every 10 ms (the table below the
  profile).
- **vs**: this row's result relative to {ours} in the same benchmark (for PostgreSQL:
  its `{base}` mode); floors are compared the same way.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="the Markdown file to write (default: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("RC_BENCH_DSN") or DEFAULT_DSN,
        help="a PostgreSQL server (any database); the benchmark drops, creates and uses "
        f"{OUR_DB} and {OLD_DB} there (default: RC_BENCH_DSN or {DEFAULT_DSN})",
    )
    parser.add_argument("--redis", default="127.0.0.1:6379", help="HOST:PORT of Redis")
    parser.add_argument(
        "--rounds", type=int, default=31, help="rounds per overhead, ~2 ms each (median)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of every in-memory worker (median)"
    )
    parser.add_argument(
        "--hot-seconds", type=float, default=hot_key.SECONDS, help="hot-key run per mode"
    )
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    parser.add_argument("--json", type=Path, help="also write every worker's raw results here")
    args = parser.parse_args()

    runner = Runner(args.rounds, args.verbose)
    started = time.monotonic()
    # Other work on the machine shows in every number: record how busy it was.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    sleep0 = sleep0_ns()
    install_errors = ensure_venvs(runner.log)
    for name, err in install_errors.items():
        runner.log(f"{name}: {err}")

    def peer(name: str, script: str, *extra: str) -> dict[str, Any]:
        if name in install_errors:
            return failed(f"{name}: {install_errors[name]}")
        return runner.worker(venv_python(name), script, *extra, ours=False)

    out: dict[str, dict[str, Any]] = {}

    # Databases: one for this library, one for 0.8.6 (same table name, other schema).
    out["prepare"] = peer("psycopg", "worker_pg_floor.py", "prepare", args.dsn, OUR_DB, OLD_DB)
    dsns = out["prepare"]["info"].get("dsns", {})
    our_dsn, old_dsn = dsns.get(OUR_DB), dsns.get(OLD_DB)
    pg_error = out["prepare"]["errors"].get("*")
    our_setup = pg_error or (our_pg_setup(runner, our_dsn) if our_dsn else "no database")
    old_setup = pg_error or (
        "rc086: " + install_errors["rc086"]
        if "rc086" in install_errors
        else (old_pg_setup(runner, old_dsn) if old_dsn else "no database")
    )
    for who, err in (("ours", our_setup), ("0.8.6", old_setup)):
        if err:
            runner.log(f"PostgreSQL set-up for {who}: {err}")

    # One measurement at a time: on two cores, a second one would be the noise. The
    # in-memory workers run `repeat` times, in turn, so that a slow spell of the
    # machine hits each library once rather than one library every time.
    runs: dict[str, list[dict[str, Any]]] = {}

    def head_to_head() -> dict[str, Any]:
        missing = [n for n in ("circuitbreaker", "pybreaker") if n in install_errors]
        if missing:
            return failed(f"{missing[0]}: {install_errors[missing[0]]}")
        paths = [str(p) for n in ("circuitbreaker", "pybreaker") for p in site_packages(n)]
        return runner.worker(sys.executable, "head_to_head.py", *paths, ours=True)

    memory_workers: dict[str, Any] = {
        "ours": lambda: runner.worker(
            sys.executable, "worker_rc.py", "--label", "ours", "--part", "memory", ours=True
        ),
        "rc086": lambda: peer("rc086", "worker_rc.py", "--label", "rc086", "--part", "memory"),
        "pybreaker": lambda: peer("pybreaker", "worker_pybreaker.py", "--part", "memory"),
        "circuitbreaker": lambda: peer("circuitbreaker", "worker_circuitbreaker.py"),
        "tenacity": lambda: peer("tenacity", "worker_tenacity.py"),
        "stamina": lambda: peer("stamina", "worker_stamina.py"),
        "backoff": lambda: peer("backoff", "worker_backoff.py"),
        "head_to_head": head_to_head,
    }
    for _ in range(max(1, args.repeat)):
        for name, run_worker in memory_workers.items():
            runs.setdefault(name, []).append(run_worker())
    for name, reports in runs.items():
        out[name] = merge(reports)
    # The head-to-head verdicts quote both libraries' times from one and the same run.
    out["head_to_head_runs"] = {"runs": runs["head_to_head"], "results": {}, "errors": {}}
    out["breakdown"] = runner.worker(sys.executable, "breakdown.py", ours=True)

    ours_pg_args = ["--label", "ours", "--part", "pg"]
    if "pybreaker" not in install_errors:
        ours_pg_args += ["--redis", args.redis]
        ours_pg_args += [f"--peer-path={p}" for p in site_packages("pybreaker")]
    out["ours_pg"] = (
        runner.worker(sys.executable, "worker_rc.py", *ours_pg_args, "--pg-dsn", our_dsn, ours=True)
        if our_dsn and not our_setup
        else failed(our_setup or "no database")
    )
    out["rc086_pg"] = (
        peer("rc086", "worker_rc.py", "--label", "rc086", "--part", "pg", "--pg-dsn", old_dsn)
        if old_dsn and not old_setup
        else failed(old_setup or "no database")
    )
    out["pybreaker_redis"] = peer(
        "pybreaker", "worker_pybreaker.py", "--part", "redis", "--redis", args.redis
    )
    out["floor"] = (
        peer("psycopg", "worker_pg_floor.py", "floors", our_dsn) if our_dsn else failed(pg_error)
    )

    ours_args = ["--label", "ours"] + (["--pg-dsn", our_dsn] if our_dsn and not our_setup else [])
    old_args = ["--label", "rc086"] + (["--pg-dsn", old_dsn] if old_dsn and not old_setup else [])
    out["mem_ours"] = runner.worker(sys.executable, "memory.py", *ours_args, ours=True)
    if our_setup:
        out["mem_ours"]["errors"].setdefault("mem.pg_row", our_setup)
    out["mem_rc086"] = peer("rc086", "memory.py", *old_args)
    if old_setup:
        out["mem_rc086"]["errors"].setdefault("mem.pg_row", old_setup)

    def hot(
        label: str,
        python: Path | str,
        dsn: str | None,
        setup: str | None,
        modes: list[str],
        ours: bool,
    ) -> dict[str, Any]:
        if setup or not dsn:
            return failed(setup or "no database")
        t0 = time.monotonic()
        report = hot_key.run(
            str(python),
            label,
            dsn,
            modes,
            seconds=args.hot_seconds,
            env=clean_env(ours, args.rounds),
            cwd=runner.workdir,
            scale_modes=(modes[0],) if label in ("ours", "floor") else (),
        )
        runner.log(f"hot_key {label}: {time.monotonic() - t0:.1f} s")
        return report

    our_modes = out["ours_pg"]["info"].get("pg_modes") or ["strict/immediate"]
    old_modes = out["rc086_pg"]["info"].get("pg_modes") or ["default (refresh 1 s)"]
    out["hot_ours"] = hot("ours", sys.executable, our_dsn, our_setup, our_modes, True)
    out["hot_rc086"] = (
        failed(install_errors["rc086"])
        if "rc086" in install_errors
        else hot("rc086", venv_python("rc086"), old_dsn, old_setup, old_modes[:1], False)
    )
    out["hot_floor"] = (
        failed(install_errors["psycopg"])
        if "psycopg" in install_errors
        else hot(
            "floor", venv_python("psycopg"), our_dsn, pg_error, list(hot_key.FLOOR_MODES), False
        )
    )

    labels = {
        "ours": f"resilient_circuit {known(out['ours'].get('version')) or our_version()}",
        "rc086": f"resilient_circuit {out['rc086'].get('version') or '0.8.6'}",
        "floor": f"psycopg {out['floor'].get('version') or pinned('psycopg')}",
        "redis": "redis-py "
        + (out["pybreaker_redis"]["info"].get("redis_client") or pinned("redis")),
    }
    for name in ("pybreaker", "circuitbreaker", "tenacity", "stamina", "backoff"):
        version = out[name].get("version") or pinned(name)
        labels[name] = f"{name} {version}"

    if args.json:
        args.json.write_text(json.dumps({"labels": labels, "workers": out}, indent=1))
    table = build_table(out, labels).markdown(labels["ours"])
    goals = targets.evaluate(out, labels)
    goals_text = targets.markdown(goals)
    print(table)
    print()
    print("Targets")
    print()
    print(goals_text)

    dsn_note = f"databases {OUR_DB} and {OLD_DB}"
    doc = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`benchmarks/run.py`); rerun it rather than editing "
        "this file. Absolute numbers belong to this machine; the ratios travel better.",
        "",
        "| Machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine(out, dsn_note, load, sleep0)),
        "",
        "## Results",
        "",
        table,
        "",
        "## Targets",
        "",
        goals_text,
        "",
        "## Profile",
        "",
        targets.profile_markdown(out, labels),
        "### Hot key: what the server's backends were doing",
        "",
        "Shares of `pg_stat_activity` samples of the benchmark's backends. *client (idle)* "
        "is a backend waiting for its client's next statement: the network round trip and "
        "the client process's own CPU time (here, 8 Python processes on the same cores).",
        "",
        hot_waits(out, labels),
        "",
        "### Hot key: throughput by number of processes",
        "",
        f"{our_modes[0]} on one key against the raw one-row `UPDATE` of one row, with 1 to "
        f"{hot_key.PROCESSES} processes; each process makes its calls one after another. "
        "`docs/capacity.md` explains the limit.",
        "",
        hot_scaling(out, labels, our_modes[0]),
        "",
        "## Method",
        "",
        METHOD.format(
            rounds=args.rounds,
            repeat=max(1, args.repeat),
            procs=hot_key.PROCESSES,
            hot_seconds=args.hot_seconds,
            trials=pg_extra.STALENESS_TRIALS,
            slice=pg_extra.BATCH_SLICE_S,
            seconds=pg_extra.BATCH_SECONDS,
            ours=labels["ours"],
            base=our_modes[0],
        ),
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(doc))
    runner.log(f"wrote {args.output} in {time.monotonic() - started:.0f} s")
    shutil.rmtree(runner.workdir, ignore_errors=True)


def known(version: str | None) -> str | None:
    """A version, unless it is a source tree's placeholder (not installed)."""
    return None if not version or "unknown" in version else version


def pinned(name: str) -> str:
    for reqs in PEERS.values():
        for req in reqs:
            if req.split("==")[0].split("[")[0] == name:
                return req.split("==")[1]
    return ""


def our_version() -> str:
    try:
        for line in (REPO / "pyproject.toml").read_text().splitlines():
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "(this repository)"


if __name__ == "__main__":
    main()
