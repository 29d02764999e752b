"""PostgreSQL scenarios of this library's own modes (worker_rc.py runs them for "ours").

- ``pg.staleness.idle`` / ``.busy``: how stale a cached admission can be. A peer
  process commits ``rc_force(key, 'OPEN')``; we time until this process's LISTEN
  connection has delivered it to the store (from then on the cached verdict is gone
  and calls ask the server). "busy": this process's main thread is calling the
  protected function in a loop meanwhile, so the listener thread waits for the GIL.
- ``pg.batched``: cached admission with batched recording in one process: calls/s,
  round trips (= transactions) per call, time added to a call over the same call on
  an in-memory breaker; ``pg.exit_flush``: a child process makes calls and exits
  without flushing, and the row's counters must hold every outcome.
- ``pg.profile``: where a strict/immediate call's time goes, statement by statement.
- ``pg.open_rejection``: a rejected call while OPEN in every mode against an in-memory
  one, in the same rounds, and how many rejections reach ``acquire`` (none should).

The peer and the exit child are this file run as a script:

    python pg_extra.py --peer DSN KEY NAMESPACE
    python pg_extra.py --exit-child DSN KEY CALLS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from fractions import Fraction
from itertools import repeat
from pathlib import Path
from time import perf_counter_ns, sleep
from typing import Any

from _harness import (
    ROUNDS,
    Report,
    RoundTripCounter,
    breaker_of,
    interleaved,
    latencies,
    mode_tag,
    noop,
    percentile,
    pg_conninfo,
    summary_of,
    timed_loop,
)

HERE = Path(__file__).resolve().parent
NAMESPACE = "bench"
STALENESS_TRIALS = 200
BUSY_TRIALS = 100
NOTIFY_TIMEOUT_S = 5.0
BATCH_SECONDS = 2.0  # per side: batched PostgreSQL calls, and in-memory calls
BATCH_SLICE_S = 0.1
EXIT_CALLS = 50_000
PROFILE_ROUNDS = 200
REJECTION_PROBE = 10_000  # rejections watched for calls to acquire
# The same-rounds rejection timing is taken in blocks this far apart: this machine's
# speed moves in phases of seconds (a bare raise of an exception costs 1.6-1.8x as much
# in a slow phase as in a fast one, whatever the code), so that one block, or one
# process's own rounds, can fall wholly in either. The 1 µs bound, an absolute one, is
# judged on the fastest block, as timeit advises; the median block is shown beside it.
REJECTION_BLOCKS = 9
REJECTION_BLOCK_GAP_S = 1.0


def scenarios(
    api: Any,
    report: Report,
    dsn: str,
    counter: RoundTripCounter,
    modes: dict[str, dict[str, Any]],
    redis: str | None = None,
    peer_paths: tuple[str, ...] = (),
) -> None:
    for busy in (False, True):
        name = f"pg.staleness.{'busy' if busy else 'idle'}"
        with report.scenario(name):
            report.ok(name, staleness(api, dsn, busy))
    with report.scenario("pg.batched"):
        report.ok("pg.batched", batched(api, dsn, counter))
    with report.scenario("pg.exit_flush"):
        report.ok("pg.exit_flush", exit_flush(dsn))
    with report.scenario("pg.profile"):
        report.ok("pg.profile", profile(api, dsn, redis, peer_paths))
    with report.scenario("pg.open_rejection"):
        report.ok("pg.open_rejection", open_rejection(api, dsn, modes))


# --------------------------------------------------------------------------- staleness


class Peer:
    """Another process with its own connection, forcing the breaker on request.

    It reports when it sent ``rc_force`` and when the reply came back, on the same
    monotonic clock as ours (CLOCK_MONOTONIC is system-wide on Linux): the commit
    lies between the two.
    """

    def __init__(self, dsn: str, key: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "pg_extra.py"), "--peer", dsn, key, NAMESPACE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the peer process did not connect")

    def force(self, state: str) -> tuple[int, int, int]:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(state + "\n")
        self._proc.stdin.flush()
        sent, replied, generation = self._proc.stdout.readline().split()
        return int(sent), int(replied), int(generation)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def peer_main(dsn: str, key: str, namespace: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        print("ready", flush=True)
        for line in sys.stdin:
            sent = perf_counter_ns()
            row = conn.execute(
                "SELECT generation FROM rc_force(%s, %s, %s)",
                (key, line.strip(), namespace),
                prepare=True,
            ).fetchone()
            replied = perf_counter_ns()
            print(sent, replied, row[0] if row else -1, flush=True)


class Heard:
    """When this process's store heard each transition, from its public ``subscribe``.

    The timestamp is taken in the store's listener thread, once the store has applied
    the notification: the moment the cached verdict changes.
    """

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], int] = {}
        self.arrived = threading.Event()

    def __call__(self, event: Any) -> None:
        self.at[(event.resource_key, event.generation)] = perf_counter_ns()
        self.arrived.set()


def staleness(api: Any, dsn: str, busy: bool) -> dict[str, Any]:
    from resilient_circuit.storage import PostgresStorage

    key = f"bench-stale-{'busy' if busy else 'idle'}-{os.getpid()}"
    storage = PostgresStorage(dsn, namespace=NAMESPACE)
    heard = Heard()
    storage.subscribe(heard)
    policy = api.policy(key, storage, Fraction(1, 10), admission="cached")
    protected = policy(noop)
    if not storage.wait_listening(5):
        raise RuntimeError("the LISTEN connection did not come up within 5 s")
    protected()
    peer = Peer(dsn, key)
    upper: list[int] = []  # from the peer sending rc_force: the commit is no earlier
    lower: list[int] = []  # from the peer's reply: the commit is no later
    statement: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def seen(generation: int) -> int:
        while (key, generation) not in heard.at:
            if not heard.arrived.wait(NOTIFY_TIMEOUT_S):
                raise RuntimeError(f"no notification within {NOTIFY_TIMEOUT_S:g} s")
            heard.arrived.clear()
        return heard.at[(key, generation)]

    def trials(count: int) -> None:
        try:
            for _ in range(count):
                sent, replied, generation = peer.force("OPEN")
                at = seen(generation)
                upper.append(at - sent)
                lower.append(at - replied)
                statement.append(replied - sent)
                seen(peer.force("CLOSED")[2])  # back to CLOSED, admitted from cache again
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    try:
        if busy:
            # The trials run in a thread; this thread keeps the GIL busy with calls.
            worker = threading.Thread(target=trials, args=(BUSY_TRIALS,), daemon=True)
            worker.start()
            calls = 0
            while not done.is_set():
                for _ in repeat(None, 200):
                    try:
                        protected()
                    except api.Rejected:
                        pass
                calls += 200
            worker.join()
        else:
            trials(STALENESS_TRIALS)
        if errors:
            raise errors[0]
        # The verdict did change: once the peer's trip is heard, a call is rejected.
        seen(peer.force("OPEN")[2])
        try:
            protected()
        except api.Rejected:
            pass
        else:
            raise RuntimeError("a call was admitted after the peer's trip was heard")
    finally:
        peer.close()
        storage.close()
    upper.sort()
    lower.sort()
    return {
        "kind": "latency",
        "median_ns": statistics.median(upper),
        "p99_ns": percentile(upper, 99),
        "lower_median_ns": statistics.median(lower),
        "lower_p99_ns": percentile(lower, 99),
        "peer_statement_ns": statistics.median(statement),
        "n": len(upper),
    }


# --------------------------------------------------------------------------- batched


def batched(api: Any, dsn: str, counter: RoundTripCounter) -> dict[str, Any]:
    """Cached admission and batched recording, as fast as one thread can call.

    Round trips are counted by the proxy every connection of this storage goes
    through: in autocommit each round trip after connecting is one statement, one
    transaction; the count runs until close() has sent the last outcome. Calls and
    in-memory calls alternate in slices of BATCH_SLICE_S, so the added time is a
    median of differences of neighbouring slices. The flusher thread's share of the
    GIL is in the calls' time, as it would be in service. The row's counters are
    read after close(): every outcome made must be there.
    """
    import psycopg

    from resilient_circuit.storage import PostgresStorage

    proxied = pg_conninfo(dsn, host="127.0.0.1", port=str(counter.port))
    key = f"bench-batched-{os.getpid()}"
    storage = PostgresStorage(proxied, namespace=NAMESPACE)
    policy = api.policy(key, storage, Fraction(1, 10), admission="cached", recording="batched")
    protected = policy(noop)
    if not storage.wait_listening(5):
        raise RuntimeError("the LISTEN connection did not come up within 5 s")
    memory = api.policy(f"{key}-memory", api.InMemoryStorage(), Fraction(1, 10))(noop)
    made = 1000
    timed_loop(protected, made)
    timed_loop(memory, 1000)
    storage.flush()
    closed = False
    try:
        before = counter.snapshot()
        pg_slices: list[tuple[int, int]] = []
        mem_slices: list[tuple[int, int]] = []
        for _ in range(int(BATCH_SECONDS / BATCH_SLICE_S)):
            for fn, slices in ((protected, pg_slices), (memory, mem_slices)):
                calls = elapsed = 0
                while elapsed < BATCH_SLICE_S * 1e9:
                    elapsed += timed_loop(fn, 1000)
                    calls += 1000
                slices.append((calls, elapsed))
        call_latency = latencies(protected, max_calls=20_000, budget_s=0.5, warmup=0)
        measured = sum(c for c, _ in pg_slices) + call_latency["n"]
        made += measured
        # What the flusher has not sent yet: the server applies outcomes one by one,
        # so at this rate a backlog may build up; close() must still deliver all of it.
        backlog = sum(b.queued for b in storage.breakers())
        started = perf_counter_ns()
        storage.close()
        closed = True
        close_ns = perf_counter_ns() - started
        after = counter.snapshot()
    finally:
        if not closed:
            storage.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_status(%s, %s)", (key, NAMESPACE)
        ).fetchone()
    pg_calls = sum(c for c, _ in pg_slices)
    pg_ns = sum(e for _, e in pg_slices)
    added = [pe / pc - me / mc for (pc, pe), (mc, me) in zip(pg_slices, mem_slices, strict=True)]
    recorded = row[0] if row else 0
    trips = after["round_trips"] - before["round_trips"]
    return {
        "kind": "throughput",
        "calls_per_s": pg_calls / (pg_ns / 1e9),
        "median_ns": call_latency["median_ns"],
        "p99_ns": call_latency["p99_ns"],
        "rt_per_call": trips / measured,
        "conn_per_call": (after["connections"] - before["connections"]) / measured,
        "round_trips": trips,
        "calls": measured,
        "added": summary_of(added),
        "memory_call_ns": statistics.median(me / mc for mc, me in mem_slices),
        "recorded": recorded,
        "made": made,
        "backlog": backlog,
        "close_ns": close_ns,
    }


def exit_flush(dsn: str) -> dict[str, Any]:
    """A process makes EXIT_CALLS batched calls and exits normally: is anything lost?"""
    import psycopg

    key = f"bench-exit-{os.getpid()}"
    done = subprocess.run(
        [sys.executable, str(HERE / "pg_extra.py"), "--exit-child", dsn, key, str(EXIT_CALLS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"exit child failed: {lines[-1] if lines else done.returncode}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_status(%s, %s)", (key, NAMESPACE)
        ).fetchone()
    found = [int(row[0]), int(row[1])] if row else [0, 0]
    return {
        "kind": "check",
        "ok": found == child["made"],
        "expected": child["made"],
        "found": found,
        "queued_at_exit": child["queued"],
    }


def exit_child(dsn: str, key: str, calls: int) -> None:
    """Calls (one failure in ten, never enough to trip), then a normal exit, unflushed."""
    from resilient_circuit import CircuitProtectorPolicy
    from resilient_circuit.storage import PostgresStorage

    storage = PostgresStorage(dsn, namespace=NAMESPACE)
    policy = CircuitProtectorPolicy(
        resource_key=key,
        storage=storage,
        failure_limit=Fraction(9, 10),
        admission="cached",
        recording="batched",
    )
    if not storage.wait_listening(5):
        raise RuntimeError("the LISTEN connection did not come up within 5 s")

    def fail() -> None:
        raise ValueError("counted")

    ok, bad = policy(noop), policy(fail)
    made = [0, 0]
    for i in range(calls):
        if i % 10 == 9:
            try:
                bad()
            except ValueError:
                made[1] += 1
        else:
            ok()
            made[0] += 1
    queued = sum(b.queued for b in storage.breakers())
    print(json.dumps({"made": made, "queued": queued}), flush=True)
    # No flush, no close: the store's exit hook must send what is still queued.


# --------------------------------------------------------------------------- profile


def pybreaker_on_redis(redis: str, peer_paths: tuple[str, ...]) -> Any:
    """pybreaker's CircuitRedisStorage call, imported from its own environment.

    Timed in the same rounds as our strict call, for the "no slower than pybreaker
    on Redis" target: the two servers' speeds drift independently otherwise.
    """
    sys.path.extend(peer_paths)
    import pybreaker
    import redis as redis_py

    host, _, port = redis.rpartition(":")
    client = redis_py.Redis(host=host, port=int(port))
    namespace = f"bench-profile-{os.getpid()}"
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=namespace)
    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)(noop)


def profile(
    api: Any, dsn: str, redis: str | None = None, peer_paths: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A strict/immediate call, taken apart into the statements it sends.

    Every statement runs on an open autocommit connection, all of them in the same
    rounds (with pybreaker's Redis call, when given its environment); server-side
    execution times come from EXPLAIN ANALYZE (execution only: no parse, no network,
    no commit). The commit's WAL flush is the difference of the one-row UPDATE with
    synchronous_commit on and off.
    """
    import psycopg

    from resilient_circuit.storage import PostgresStorage

    key = f"bench-profile-{os.getpid()}"
    storage = PostgresStorage(dsn, namespace=NAMESPACE)
    protected = api.policy(key, storage, Fraction(1, 10))(noop)
    protected()
    acquire = "SELECT permitted, state, generation, retry_after FROM rc_try_acquire(%s, %s)"
    record = "SELECT state, generation FROM rc_record(%s, true, %s, NULL)"
    update = "UPDATE bench_floor SET n = n + 1 WHERE id = 1"
    args = (key, NAMESPACE)
    off = pg_conninfo(dsn, options="-c synchronous_commit=off")
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(off, autocommit=True) as async_conn,
    ):
        steps: dict[str, Any] = {
            "select1": lambda: conn.execute("SELECT 1", prepare=True).fetchone(),
            "acquire": lambda: conn.execute(acquire, args, prepare=True).fetchone(),
            "update": lambda: conn.execute(update, prepare=True),
            "update_async": lambda: async_conn.execute(update, prepare=True),
            "record": lambda: conn.execute(record, args, prepare=True).fetchone(),
            "call": protected,
        }
        if redis and peer_paths:
            steps["pybreaker_redis"] = pybreaker_on_redis(redis, peer_paths)
        times: dict[str, list[int]] = {name: [] for name in steps}
        for fn in steps.values():
            for _ in range(20):
                fn()
        for _ in range(PROFILE_ROUNDS):
            for name, fn in steps.items():
                start = perf_counter_ns()
                fn()
                times[name].append(perf_counter_ns() - start)
        executed: dict[str, list[float]] = {
            "acquire_exec": [],
            "record_exec": [],
            "update_exec": [],
        }
        explain = "EXPLAIN (ANALYZE, COSTS FALSE, FORMAT JSON) "
        for _ in range(PROFILE_ROUNDS // 2):
            for name, statement, params in (
                ("acquire_exec", acquire, args),
                ("record_exec", record, args),
                ("update_exec", update, None),
            ):
                plan = conn.execute(explain + statement, params).fetchone()[0]
                executed[name].append(plan[0]["Execution Time"] * 1e6)  # ms -> ns
    storage.close()
    result: dict[str, Any] = {"kind": "pg_profile"}
    result.update({name: statistics.median(v) for name, v in times.items()})
    result.update({name: statistics.median(v) for name, v in executed.items()})
    return result


def open_rejection(api: Any, dsn: str, modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A user's rejected call while OPEN, in every mode, against an in-memory one.

    The decorated calls are timed, all in the same rounds, after a first rejection has
    fetched the verdict: what a PostgreSQL rejection costs beyond an in-memory one, on
    one machine at one moment (the per-mode scenarios run in their own rounds, at
    other moments, than the in-memory one). Then, untimed, the calls that reach
    ``acquire`` in REJECTION_PROBE rejections: the decorator rejects from the store's
    published verdict (``Breaker.rejecting``) without calling it.
    """
    from resilient_circuit.storage import PostgresStorage

    stores: list[Any] = []
    try:
        calls: dict[str, Any] = {"noop": noop}
        handles: dict[str, Any] = {}
        for mode, kwargs in modes.items():
            storage = PostgresStorage(dsn, namespace=NAMESPACE)
            stores.append(storage)
            key = f"bench-open-{mode_tag(mode)}-{os.getpid()}"
            policy = api.policy(key, storage, Fraction(1, 10), **kwargs)
            if kwargs.get("admission") == "cached" and not storage.wait_listening(5):
                raise RuntimeError("the LISTEN connection did not come up within 5 s")
            calls[mode] = opened(api, policy)
            handles[mode] = breaker_of(policy)
        calls["memory"] = opened(
            api, api.policy("bench-open-memory", api.InMemoryStorage(), Fraction(1, 10))
        )
        rejected, state = api.Rejected.rejected, api.State.OPEN

        def exception() -> None:
            # The exception every rejection raises, built and raised alone: the part
            # of a rejection no mode can avoid, and a gauge of the machine's phase.
            raise rejected("bench-open", state, 1)

        calls["exception"] = exception
        blocks: dict[str, list[float]] = {name: [] for name in calls if name != "noop"}
        for block in range(REJECTION_BLOCKS):
            if block:
                sleep(REJECTION_BLOCK_GAP_S)
            rows = interleaved(calls, rounds=max(5, ROUNDS // 2))
            for name, per_block in blocks.items():
                per_block.append(
                    statistics.median(c - b for c, b in zip(rows[name], rows["noop"], strict=True))
                )
        acquired = {mode: acquire_calls(calls[mode], handles[mode]) for mode in modes}
    finally:
        for storage in stores:
            storage.close()
    over = {name: statistics.median(per_block) for name, per_block in blocks.items()}
    return {
        "kind": "pair",
        "memory_ns": over.pop("memory"),
        "exception_ns": over.pop("exception"),
        "pg_ns": over,
        "blocks": blocks,
        "acquire_calls": acquired,
        "probed": REJECTION_PROBE,
    }


def opened(api: Any, policy: Any) -> Any:
    """``policy``'s protected noop, forced OPEN and rejected once (which fetches the verdict)."""
    protected = policy(noop)
    policy.status = api.State.OPEN
    try:
        protected()
    except api.Rejected:
        return protected
    raise RuntimeError("the breaker did not reject a call while OPEN")


def acquire_calls(protected: Any, handle: Any) -> int:
    """How many of REJECTION_PROBE rejections of ``protected`` call ``handle.acquire``."""
    code = type(handle).acquire.__code__
    seen = 0

    def watch(frame: Any, event: str, _arg: Any) -> None:
        nonlocal seen
        if event == "call" and frame.f_code is code:
            seen += 1

    sys.setprofile(watch)
    try:
        for _ in repeat(None, REJECTION_PROBE):
            try:
                protected()
            except Exception:
                pass
    finally:
        sys.setprofile(None)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer", nargs=3, metavar=("DSN", "KEY", "NAMESPACE"))
    parser.add_argument("--exit-child", nargs=3, metavar=("DSN", "KEY", "CALLS"))
    args = parser.parse_args()
    if args.peer:
        peer_main(*args.peer)
    elif args.exit_child:
        dsn, key, calls = args.exit_child
        exit_child(dsn, key, int(calls))
    else:
        parser.error("run by worker_rc.py; see the module's docstring")


if __name__ == "__main__":
    main()
