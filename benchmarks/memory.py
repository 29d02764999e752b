"""What a breaker costs in memory, in the process and in PostgreSQL.

- ``mem.window100``: bytes per in-memory breaker with a full window of 100 outcomes
  (tracemalloc; policy, decorated wrapper and its storage entry; averaged over 100).
- ``mem.100k``: bytes per breaker when a process holds 100,000 of them (window 100,
  one call each: a realistic many-keys process, where most keys are quiet), as the
  growth of the resident set: at this scale allocator overhead is part of the cost,
  and tracemalloc would slow the run six-fold.
- ``mem.pg_row``: the size of one breaker's row in PostgreSQL after 100 calls
  (``pg_column_size`` of the whole row).

Works for this repository's library and for 0.8.6 (same API); run by run.py, or

    python benchmarks/memory.py --label ours [--pg-dsn DSN]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import tracemalloc
from fractions import Fraction
from typing import Any

from _harness import LogWatch, Report, flaky, noop
from worker_rc import Api

WINDOW = Fraction(99, 100)  # window = denominator = 100; 1:1 outcomes never trip 99/100


def traced(build: Any) -> tuple[int, Any]:
    """Bytes still allocated after ``build()`` returns (its result is kept alive)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, kept


def window100(api: Api, report: Report) -> None:
    storage = api.InMemoryStorage()
    fn = flaky()  # one callable for all: its own bytes are not the breaker's
    # One breaker first, untraced: first-use allocations (caches, lazily built
    # objects) belong to the process, not to every breaker.
    _fill(api.policy("mem-warm", storage, WINDOW)(fn))

    def build() -> list[Any]:
        kept = []
        for i in range(100):
            protected = api.policy(f"mem-w-{i}", storage, WINDOW)(fn)
            _fill(protected)
            kept.append(protected)
        return kept

    size, _ = traced(build)
    report.ok("mem.window100", {"kind": "bytes", "bytes": size / 100, "breakers": 100})


def _fill(protected: Any) -> None:
    for _ in range(100):
        try:
            protected()
        except ValueError:
            pass


def many(api: Api, report: Report, count: int = 100_000) -> None:
    kwargs = {}
    if "max_entries" in inspect.signature(api.InMemoryStorage).parameters:
        # 0.8.6 evicts beyond 8,192 keys by default (and scans its whole table to do
        # so); unbounded, it keeps what every breaker here keeps: all of them.
        kwargs["max_entries"] = None
    storage = api.InMemoryStorage(**kwargs)
    api.policy("mem-warm", storage, WINDOW)(noop)()
    keys = [f"mem-k-{i}" for i in range(count)]  # the keys are the caller's, not ours
    kept = []
    gc.collect()
    before = rss_bytes()
    for key in keys:
        protected = api.policy(key, storage, WINDOW)(noop)
        protected()
        kept.append(protected)
    gc.collect()
    size = rss_bytes() - before
    result = {"kind": "bytes", "bytes": size / count, "total": size, "breakers": count}
    report.ok("mem.100k", result)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pg_row(api: Api, report: Report, dsn: str) -> None:
    import psycopg

    from resilient_circuit.storage import PostgresStorage

    key = f"mem-row-{os.getpid()}"
    _fill(api.policy(key, PostgresStorage(dsn, namespace="bench"), WINDOW)(flaky()))
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_column_size(t.*) FROM rc_circuit_breakers AS t"
            " WHERE resource_key = %s AND namespace = %s",
            (key, "bench"),
        ).fetchone()
    if row is None:
        raise RuntimeError("no row in rc_circuit_breakers for the breaker")
    report.ok("mem.pg_row", {"kind": "bytes", "bytes": row[0]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="ours")
    parser.add_argument("--pg-dsn")
    args = parser.parse_args()
    try:
        api = Api()
    except Exception as exc:
        report = Report("resilient_circuit")
        report.fail("*", exc)
        report.emit()
        return
    report = Report("resilient_circuit", api.version, LogWatch("resilient_circuit"))
    with report.scenario("mem.window100"):
        window100(api, report)
    with report.scenario("mem.100k"):
        many(api, report)
    if args.pg_dsn:
        with report.scenario("mem.pg_row"):
            pg_row(api, report, args.pg_dsn)
    report.emit()


if __name__ == "__main__":
    main()
