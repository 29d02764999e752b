"""Timing helpers shared by every worker.

Standard library only: the workers run in separate virtual environments (one per
library), and each of them imports this module from the folder of the script.
Python 3.10+.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from time import perf_counter_ns
from typing import Any

HERE = Path(__file__).resolve().parent

# Many short rounds rather than a few long ones: a round of ~2 ms is long enough for
# the timer (~50 ns) and the loop set-up to vanish, and short enough that most rounds
# run without being preempted, so that their median holds up on a busy machine where
# every 40 ms round would catch some other process's time slice.
ROUND_TARGET_NS = 2_000_000
ROUNDS = int(os.environ.get("RC_BENCH_ROUNDS", "31"))
MIN_ITERATIONS = 20
MAX_ITERATIONS = 20_000


def timed_loop(fn: Callable[[], Any], n: int) -> int:
    """Call ``fn`` ``n`` times and return the elapsed nanoseconds.

    The same loop times the bare and the protected callable, so the loop's own cost
    (iteration, the try block, a caught exception's unwinding in the caller) cancels
    in the subtraction. ``repeat`` is the cheapest iterator CPython has.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection landing in one loop only is noise
    try:
        start = perf_counter_ns()
        for _ in repeat(None, n):
            try:
                fn()
            except Exception:
                pass
        return perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(fn: Callable[[], Any]) -> int:
    """An even iteration count that makes one round of ``fn`` last about ROUND_TARGET_NS.

    Even, because the flaky callables alternate failure and success: an even count
    leaves every round starting in the same phase.
    """
    n = 16
    while True:
        elapsed = timed_loop(fn, n)
        if elapsed >= ROUND_TARGET_NS or n >= MAX_ITERATIONS:
            break
        n *= 4
    per_call = max(elapsed / n, 1.0)
    n = int(ROUND_TARGET_NS / per_call)
    n = max(MIN_ITERATIONS, min(MAX_ITERATIONS, n))
    return n - n % 2


def overhead(
    bare: Callable[[], Any], protected: Callable[[], Any], rounds: int = ROUNDS
) -> dict[str, Any]:
    """Per-call overhead of ``protected`` over ``bare``: median of rounds, in ns.

    Both are called the same number of times, interleaved round by round so a slow
    drift of the machine (frequency, another process) hits both alike.
    """
    n = calibrate(protected)
    timed_loop(bare, n)  # warm-up: caches, lazy imports, first-call paths
    timed_loop(protected, n)
    bare_ns: list[float] = []
    prot_ns: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            bare_ns.append(timed_loop(bare, n) / n)
            prot_ns.append(timed_loop(protected, n) / n)
        else:
            prot_ns.append(timed_loop(protected, n) / n)
            bare_ns.append(timed_loop(bare, n) / n)
    per_round = [p - b for p, b in zip(prot_ns, bare_ns, strict=True)]
    bare_median = statistics.median(bare_ns)
    result = _summary(statistics.median(prot_ns) - bare_median, per_round, n, rounds)
    result["bare_ns"] = bare_median
    return result


def failure_overhead(
    protect: Callable[[Callable[[], Any]], Callable[[], Any]],
    rounds: int = ROUNDS,
    prefill: int = 0,
    protect_success: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """Per-call overhead of a counted failure, with ``protect`` wrapping one breaker.

    A breaker whose limit is a ratio trips on a pure failure stream, so every breaker
    here gets the same 1:1 failure/success stream, configured never to trip, and the
    success share is taken out with a success-only stream through the same breaker,
    in the same round: failure = 2 x overhead(stream) - overhead(success). Doing the
    subtraction per round keeps a drift of the machine out of it. ``prefill`` calls of
    the stream come first, so that a window is measured full, as it is in service.

    ``protect_success`` (a second breaker of the same configuration) takes the success
    share: through the stream's own breaker, the first successes of every round would
    also be shifting the stream's failures out of its window, and a window of 1000
    would have its failures' cost counted as its successes'.
    """
    bare_stream, stream = flaky(), protect(flaky())
    success = (protect_success or protect)(noop)
    timed_loop(stream, prefill + prefill % 2)
    n = calibrate(stream)
    for fn in (bare_stream, stream, noop, success):
        timed_loop(fn, n)
    per_round: list[float] = []
    for _ in range(rounds):
        b_stream, p_stream = timed_loop(bare_stream, n) / n, timed_loop(stream, n) / n
        b_success, p_success = timed_loop(noop, n) / n, timed_loop(success, n) / n
        per_round.append(2 * (p_stream - b_stream) - (p_success - b_success))
    result = _summary(statistics.median(per_round), per_round, n, rounds)
    result["note"] = "from a 1:1 failure/success stream"
    return result


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Per-round ns per call of every callable, all timed in the same rounds.

    Comparisons between scenarios (window 10 against window 1000, a component
    against its baseline) are then taken round by round: a machine whose speed
    drifts (another process on the sibling core, frequency) shifts both sides of
    every difference alike. Each callable has its own iteration count (about
    ROUND_TARGET_NS a round), as in ``overhead``, so that short loops do not make
    cold caches a larger share of one callable than of another.
    """
    counts = {name: calibrate(fn) for name, fn in fns.items()}
    for name, fn in fns.items():
        timed_loop(fn, counts[name])  # warm-up
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        # Alternate the order, so that no callable always runs right after another.
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(timed_loop(fns[name], counts[name]) / counts[name])
    return out


def summary_of(per_round: list[float], rounds: int | None = None) -> dict[str, Any]:
    """An overhead result from per-round differences (their median, and IQR)."""
    return _summary(statistics.median(per_round), per_round, 0, rounds or len(per_round))


def median_ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a/b: robust to a drift that hits both."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True) if y > 0)


def profile_calls(
    fn: Callable[[], Any], bare: Callable[[], Any] | None = None, calls: int = 2000
) -> dict[str, Any]:
    """Function calls (Python, and C as cProfile sees them) per call of ``fn``.

    Deterministic where timings are not: how many frames, lock operations and clock
    reads a path costs explains a timing better than another timing does. The calls
    ``bare`` makes (the protected function's own) are taken out.
    """
    mine = _call_counts(fn, calls)
    for name, per in _call_counts(bare or noop, calls).items():
        mine[name] = mine.get(name, 0.0) - per
    rows = sorted(((name, per) for name, per in mine.items() if per >= 0.01), key=lambda r: -r[1])
    return {
        "kind": "calls",
        "calls_per_call": sum(per for _, per in rows),
        "functions": [(name, round(per, 3)) for name, per in rows],
    }


def _call_counts(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    import cProfile
    import pstats
    import re

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in repeat(None, calls):
        try:
            fn()
        except Exception:
            pass
    profiler.disable()
    counts: dict[str, float] = {}
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, name), (primitive, *_rest) in stats.items():
        if "_lsprof" in name:
            continue  # the profiler's own disable()
        if filename != "~":
            path = Path(filename)
            module = path.parent.name if path.stem == "__init__" else path.stem
            name = f"{module}.{name}"
        name = re.sub(r" at 0x[0-9a-f]+", "", name)  # a type's address differs per run
        counts[name] = counts.get(name, 0.0) + primitive / calls
    return counts


def count_sleeps(fn: Callable[[], Any], calls: int = 200) -> dict[str, Any]:
    """How often ``time.sleep`` is called per call of ``fn`` (a retried call).

    Counted by replacing ``time.sleep`` for the duration: a retry library that
    "waits" zero seconds by calling ``sleep(0)`` still pays a system call and gives
    up the GIL, which a zero delay should not.
    """
    import time as time_module

    real = time_module.sleep
    seen: list[float] = []

    def counting(seconds: float) -> None:
        seen.append(seconds)

    time_module.sleep = counting
    try:
        for _ in range(calls):
            try:
                fn()
            except Exception:
                pass
    finally:
        time_module.sleep = real
    return {"kind": "count", "per_call": len(seen) / calls, "calls": calls, "sleeps": len(seen)}


def _summary(ns: float, per_round: list[float], n: int, rounds: int) -> dict[str, Any]:
    ordered = sorted(per_round)
    return {
        "kind": "overhead",
        "ns": ns,
        # The middle half of the per-round differences: how much the rounds agree.
        "q1_ns": ordered[len(ordered) // 4],
        "q3_ns": ordered[(3 * len(ordered)) // 4],
        "n": n,
        "rounds": rounds,
    }


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def latencies(
    fn: Callable[[], Any], max_calls: int = 2000, budget_s: float = 2.0, warmup: int = 50
) -> dict[str, Any]:
    """Per-call wall time of ``fn`` (median, p99), each call timed on its own.

    For calls that cross a socket: there the timer's ~50 ns is noise, and the tail
    (p99) matters as much as the median, which a loop average would hide.
    """
    for _ in range(warmup):
        try:
            fn()
        except Exception:
            pass
    samples: list[int] = []
    errors = 0
    deadline = perf_counter_ns() + int(budget_s * 1e9)
    for _ in range(max_calls):
        start = perf_counter_ns()
        try:
            fn()
        except Exception:
            errors += 1
        end = perf_counter_ns()
        samples.append(end - start)
        if end > deadline:
            break
    samples.sort()
    return {
        "kind": "latency",
        "median_ns": statistics.median(samples),
        "p99_ns": percentile(samples, 99),
        "n": len(samples),
        "errors": errors,
    }


def flaky() -> Callable[[], None]:
    """A no-op that raises on every other call, starting with a failure.

    A fresh exception each time: re-raising one instance would grow its traceback.
    """
    flip = _alternator()

    def call() -> None:
        if next(flip):
            raise ValueError("flaky")

    return call


def _alternator() -> Iterator[bool]:
    from itertools import cycle

    return cycle((True, False))


def mode_tag(mode: str) -> str:
    """A mode's name as it appears in scenario keys: "strict/immediate" -> "strict-immediate"."""
    return mode.split(" (")[0].replace("/", "-").replace(" ", "-")


def noop() -> None:
    return None


def breaker_of(policy: Any) -> Any:
    """The breaker handle ``policy``'s decorator drives, through the public storage API.

    A storage keeps one handle per key, so binding the policy's key again (with its
    own configuration and modes) returns that very handle.
    """
    return policy.storage.breaker(
        policy.resource_key,
        policy.namespace,
        policy.config,
        admission=policy.admission,
        recording=policy.recording,
    )


def by_hand(fn: Callable[[], Any]) -> Callable[[], Any]:
    """The baseline of a retried call: the same two attempts under a hand-written retry."""

    def call() -> Any:
        try:
            return fn()
        except Exception:
            return fn()

    return call


def retry_worker(library: str, decorate: Callable[[Callable[[], Any]], Callable[[], Any]]) -> None:
    """Measure a retry decorator: 4 attempts at most, zero delay, one JSON line out."""
    from importlib.metadata import version

    report = Report(library, version(library))
    with report.scenario("retry.success"):
        report.ok("retry.success", overhead(noop, decorate(noop)))
    with report.scenario("retry.one_failure"):
        report.ok("retry.one_failure", overhead(by_hand(flaky()), decorate(flaky())))
    with report.scenario("retry.sleeps"):
        report.ok("retry.sleeps", count_sleeps(decorate(flaky())))
    report.emit()


class LogWatch(logging.Handler):
    """Keeps the WARNING-and-above records of one logger (and its children).

    A breaker that cannot reach its storage fails open and says so once, at WARNING:
    its calls then cost nothing and a benchmark would happily time that. A scenario
    during which the library warned is therefore reported as n/a, with the warning.
    """

    def __init__(self, logger_name: str) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        logging.getLogger(logger_name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def first(self) -> str | None:
        if not self.records:
            return None
        record = self.records[0]
        return f"the library logged {record.levelname}: {record.getMessage()}"


class Report:
    """Collects one worker's results and prints them as a single JSON line."""

    def __init__(
        self, library: str, version: str | None = None, watch: LogWatch | None = None
    ) -> None:
        self.watch = watch
        self.data: dict[str, Any] = {
            "library": library,
            "version": version,
            "python": sys.version.split()[0],
            "results": {},
            "errors": {},
            "info": {},
        }

    def ok(self, scenario: str, result: dict[str, Any]) -> None:
        self.data["results"][scenario] = result

    def fail(self, scenario: str, exc: BaseException | str) -> None:
        if isinstance(exc, BaseException):
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        else:
            text = exc
        self.data["errors"][scenario] = text[:300]

    @contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        """Run one scenario; a failure marks it n/a instead of ending the worker."""
        if self.watch is not None:
            self.watch.records.clear()
        try:
            yield
        except Exception as exc:
            self.fail(name, exc)
            return
        warning = self.watch.first() if self.watch is not None else None
        if warning is not None:
            self.data["results"].pop(name, None)
            self.fail(name, warning)

    def emit(self) -> None:
        sys.stdout.write(json.dumps(self.data) + "\n")
        sys.stdout.flush()


class RoundTripCounter:
    """A counting TCP proxy (rtproxy.py) in a child process, for round trips per call.

    It runs in its own process so that counting costs the measured process nothing
    but the extra hop; latencies are never measured through it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "rtproxy.py"), target_host, str(target_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("round-trip proxy did not start")
        self.port = int(line)

    def snapshot(self) -> dict[str, int]:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write("snap\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> RoundTripCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_round_trips(
    counter: RoundTripCounter,
    fn: Callable[[], Any],
    max_calls: int = 200,
    warmup: int = 20,
    budget_s: float = 1.0,
) -> dict[str, float]:
    """Round trips and new connections per call of ``fn``, which talks via ``counter``.

    The count is exact whatever the number of calls, so slow libraries get fewer
    calls (at least 20) to keep within ``budget_s``.
    """
    start = perf_counter_ns()
    for _ in range(warmup):
        try:
            fn()
        except Exception:
            pass
    per_call = (perf_counter_ns() - start) / warmup / 1e9
    calls = max(20, min(max_calls, int(budget_s / max(per_call, 1e-9))))
    before = counter.snapshot()
    for _ in range(calls):
        try:
            fn()
        except Exception:
            pass
    after = counter.snapshot()
    return {
        "rt_per_call": (after["round_trips"] - before["round_trips"]) / calls,
        "conn_per_call": (after["connections"] - before["connections"]) / calls,
    }


def pg_conninfo(dsn: str, **overrides: str) -> str:
    """``dsn`` with some libpq parameters replaced (URI or key=value form alike)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params.update(overrides)
    return make_conninfo("", **params)


def pg_host_port(dsn: str) -> tuple[str, int]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")
    if host.startswith("/"):
        raise ValueError("round trips are counted over TCP; give the DSN a host address")
    return host, int(params.get("port") or 5432)
