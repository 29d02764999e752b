"""Worker for resilient_circuit: this repository's version, or 0.8.6 from the index.

Both share the import name and, by design, the public API, so one worker measures
both; run.py starts it with the interpreter of the right environment. Every
scenario is measured on its own: whatever the imported version cannot do yet is
reported as an error for that scenario (shown as n/a), never a crash of the run.

    python worker_rc.py --label ours [--pg-dsn DSN] [--part all|memory|pg]

``--part memory`` is what run.py repeats (in-process timings vary from one process
to the next); ``--part pg`` is run once.
"""

from __future__ import annotations

import argparse
import inspect
import time
from datetime import timedelta
from fractions import Fraction
from typing import Any

from _harness import (
    LogWatch,
    Report,
    RoundTripCounter,
    by_hand,
    count_round_trips,
    count_sleeps,
    failure_overhead,
    flaky,
    interleaved,
    latencies,
    median_ratio,
    mode_tag,
    noop,
    overhead,
    pg_conninfo,
    pg_host_port,
    profile_calls,
    summary_of,
    timed_loop,
)

COOLDOWN = timedelta(seconds=60)  # long enough that a forced OPEN stays OPEN throughout

# PostgreSQL modes of this repository's breaker: how admission is decided and how
# outcomes are written. 0.8.6 has neither knob; it has a refresh interval instead.
OUR_MODES: dict[str, dict[str, Any]] = {
    "strict/immediate": {"admission": "strict", "recording": "immediate"},
    "cached/immediate": {"admission": "cached", "recording": "immediate"},
    "strict/batched": {"admission": "strict", "recording": "batched"},
    "cached/batched": {"admission": "cached", "recording": "batched"},
}
OLD_MODES: dict[str, dict[str, Any]] = {
    "default (refresh 1 s)": {},
    "refresh every call": {"admission_refresh_interval": timedelta(0)},
}
WINDOWS = (10, 1000)
TIME_WINDOWS = {"60s": timedelta(seconds=60), "1h": timedelta(hours=1)}


class Api:
    """The names a worker needs, imported once; raises ImportError if any is missing."""

    def __init__(self) -> None:
        import resilient_circuit as rc
        from resilient_circuit import (
            CircuitProtectorPolicy,
            CircuitState,
            FixedDelay,
            RetryWithBackoffPolicy,
        )
        from resilient_circuit.exceptions import ProtectedCallError
        from resilient_circuit.storage import InMemoryStorage

        self.module = rc
        self.version = getattr(rc, "__version__", None)
        self.Policy = CircuitProtectorPolicy
        self.State = CircuitState
        self.FixedDelay = FixedDelay
        self.Retry = RetryWithBackoffPolicy
        self.Rejected = ProtectedCallError
        self.InMemoryStorage = InMemoryStorage

    def policy(self, key: str, storage: Any, failure_limit: Fraction, **extra: Any) -> Any:
        return self.Policy(
            resource_key=key,
            storage=storage,
            failure_limit=failure_limit,
            cooldown=COOLDOWN,
            **extra,
        )


def modes_for(api: Api, label: str) -> dict[str, dict[str, Any]]:
    """The PostgreSQL modes to measure: this repository's, or 0.8.6's."""
    return OUR_MODES if label == "ours" else OLD_MODES


def expect_rejection(api: Api, fn: Any) -> None:
    """Fail the scenario unless ``fn`` is really rejected: else we would time a no-op."""
    try:
        fn()
    except api.Rejected:
        return
    raise RuntimeError("the breaker did not reject a call while OPEN")


def expect_closed(api: Api, policy: Any) -> None:
    """Fail the scenario if the failure stream tripped the breaker (it must not)."""
    if policy.status != api.State.CLOSED:
        raise RuntimeError(f"breaker left CLOSED during a failure scenario: {policy.status}")


def passthrough(func: Any) -> Any:
    """The cheapest decorator Python allows: the floor under any wrapper's overhead."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call


def breaker_scenarios(api: Api, report: Report, label: str) -> None:
    with report.scenario("breaker.success"):
        # The configuration a typical user writes: trip at 10% failures over 10 calls.
        policy = api.policy("bench-success", api.InMemoryStorage(), Fraction(1, 10))
        report.ok("breaker.success", overhead(noop, policy(noop)))
        report.ok("profile.success", profile_calls(policy(noop)))

    with report.scenario("breaker.failure"):
        # A 9/10 limit never trips on the 1:1 stream (see failure_overhead).
        storage = api.InMemoryStorage()
        policy = api.policy("bench-failure", storage, Fraction(9, 10))
        twin = api.policy("bench-failure-ok", storage, Fraction(9, 10))
        result = failure_overhead(policy, protect_success=twin)
        expect_closed(api, policy)
        report.ok("breaker.failure", result)
        report.ok("profile.failure", profile_calls(policy(flaky()), flaky()))

    with report.scenario("breaker.rejection"):
        policy = api.policy("bench-open", api.InMemoryStorage(), Fraction(1, 10))
        protected = policy(noop)
        policy.status = api.State.OPEN
        expect_rejection(api, protected)
        report.ok("breaker.rejection", overhead(noop, protected))
        report.ok("profile.rejection", profile_calls(protected))

    with report.scenario("window.*"):
        window_scenarios(api, report)

    if label == "ours":
        with report.scenario("time_window.*"):
            time_window_scenarios(api, report)


def window_scenarios(api: Api, report: Report) -> None:
    """Windows of 10 and 1000 outcomes, timed in the same rounds.

    The target is a ratio (window 1000 within 10% of window 10); measured in
    separate blocks it would carry the machine's drift between them, so every
    callable below runs in every round and the ratio is the median of per-round
    ratios. A window of n outcomes is a failure limit of (n-1)/n, which the 1:1
    stream never reaches; each breaker is measured full, as in service.
    """
    storage = api.InMemoryStorage()
    fns: dict[str, Any] = {"noop": noop, "bare_stream": flaky()}
    streams: dict[int, Any] = {}
    for size in WINDOWS:
        limit = Fraction(size - 1, size)
        ok = api.policy(f"bench-w{size}-s", storage, limit)(noop)
        stream_policy = api.policy(f"bench-w{size}-f", storage, limit)
        stream = stream_policy(flaky())
        timed_loop(ok, size)
        timed_loop(stream, 2 * size)
        fns[f"ok{size}"], fns[f"stream{size}"] = ok, stream
        streams[size] = stream_policy
    rows = interleaved(fns)
    success: dict[int, list[float]] = {}
    failure: dict[int, list[float]] = {}
    for size in WINDOWS:
        ok = [p - b for p, b in zip(rows[f"ok{size}"], rows["noop"], strict=True)]
        stream = [p - b for p, b in zip(rows[f"stream{size}"], rows["bare_stream"], strict=True)]
        success[size] = ok
        failure[size] = [2 * s - o for s, o in zip(stream, ok, strict=True)]
        report.ok(f"window.{size}.success", summary_of(ok))
        report.ok(f"window.{size}.failure", summary_of(failure[size]))
        expect_closed(api, streams[size])
    small, large = WINDOWS
    for outcome, rows_of in (("success", success), ("failure", failure)):
        report.ok(
            f"window.ratio.{outcome}",
            {"kind": "ratio", "ratio": median_ratio(rows_of[large], rows_of[small])},
        )


def time_window_scenarios(api: Api, report: Report) -> None:
    """Time windows of 60 s and 1 h against a count window of 10, in the same rounds.

    Targets: a time window's success path within 1.2x a count window's, and the
    duration (so the bucket width) not changing it. Each breaker gets a full bucket
    of successes first, as in service.
    """
    storage = api.InMemoryStorage()
    fns: dict[str, Any] = {"noop": noop}
    fns["count"] = api.policy("bench-tw-count", storage, Fraction(1, 10))(noop)
    # The floor of a time window's success: a count window's whole path plus the one
    # clock read that knowing whether the newest bucket still runs takes (the same
    # policy around a function that reads the clock once: over the noop baseline, its
    # overhead is the count window's plus that read).
    fns["count+clock"] = api.policy("bench-tw-count-clock", storage, Fraction(1, 10))(read_clock)
    for label, duration in TIME_WINDOWS.items():
        fns[label] = api.policy(
            f"bench-tw-{label}", storage, Fraction(1, 10), window_duration=duration
        )(noop)
    for fn in fns.values():
        timed_loop(fn, 1000)
    rows = interleaved(fns)
    overheads = {
        name: [p - b for p, b in zip(rows[name], rows["noop"], strict=True)]
        for name in fns
        if name != "noop"
    }
    for name, per_round in overheads.items():
        report.ok(f"time_window.{name}.success", summary_of(per_round))
    short, long = TIME_WINDOWS
    report.ok(
        "time_window.ratio.vs_count",
        {"kind": "ratio", "ratio": median_ratio(overheads[short], overheads["count"])},
    )
    report.ok(
        "time_window.ratio.floor",
        {"kind": "ratio", "ratio": median_ratio(overheads["count+clock"], overheads["count"])},
    )
    report.ok(
        "time_window.ratio.duration",
        {"kind": "ratio", "ratio": median_ratio(overheads[long], overheads[short])},
    )


def read_clock() -> None:
    _monotonic_ns()


_monotonic_ns = time.monotonic_ns


def retry_scenarios(api: Api, report: Report) -> None:
    def policy() -> Any:
        extra: dict[str, Any] = {}
        if "sleep" in inspect.signature(api.Retry).parameters:
            # A policy takes its sleep at construction; this one looks time.sleep up
            # at each call, so that count_sleeps sees every sleep it asks for.
            extra["sleep"] = lambda seconds: time.sleep(seconds)
        return api.Retry(max_retries=3, backoff=api.FixedDelay(timedelta(0)), **extra)

    with report.scenario("retry.success"):
        # In the same rounds as the cheapest decorator Python allows: the bound is
        # absolute, and the floor says what any decorator costs on this machine now.
        rows = interleaved({"noop": noop, "floor": passthrough(noop), "retry": policy()(noop)})
        for key, name in (("retry.success", "retry"), ("floor.decorator", "floor")):
            report.ok(
                key, summary_of([p - b for p, b in zip(rows[name], rows["noop"], strict=True)])
            )

    with report.scenario("retry.one_failure"):
        report.ok("retry.one_failure", overhead(by_hand(flaky()), policy()(flaky())))

    with report.scenario("retry.sleeps"):
        report.ok("retry.sleeps", count_sleeps(policy()(flaky())))


OPEN_WINDOW_S = 1.5


def open_round_trips(api: Api, counter: RoundTripCounter, protected: Any) -> dict[str, Any]:
    """Round trips while OPEN, once the first call has brought the server's verdict.

    Counted over two windows of OPEN_WINDOW_S of back-to-back rejections rather than
    a few hundred calls: a store may hold a verdict for less than the cooldown (for
    example until it can hear it revoked) and ask again, and only a window longer
    than that hold shows the question.
    """
    expect_rejection(api, protected)  # the round trip that fetches the verdict
    windows = []
    for _ in range(2):
        before = counter.snapshot()
        calls = 0
        deadline = time.monotonic() + OPEN_WINDOW_S
        while time.monotonic() < deadline:
            for _ in range(100):
                try:
                    protected()
                except api.Rejected:
                    pass
            calls += 100
        after = counter.snapshot()
        # Round trips of connections opened during the window are their set-up (and
        # a LISTEN), not questions about the breaker; the proxy tells them apart.
        known = before["per_connection"]
        setup = sum(n for c, n in after["per_connection"].items() if c not in known)
        trips = after["round_trips"] - before["round_trips"]
        windows.append(
            {
                "round_trips": trips - setup,
                "setup_round_trips": setup,
                "connections": after["connections"] - before["connections"],
                "calls": calls,
            }
        )
    calls = sum(w["calls"] for w in windows)
    return {
        "rt_per_call": sum(w["round_trips"] + w["setup_round_trips"] for w in windows) / calls,
        "conn_per_call": sum(w["connections"] for w in windows) / calls,
        "open_windows": windows,
        "open_window_s": OPEN_WINDOW_S,
    }


def postgres_scenarios(
    api: Api,
    report: Report,
    dsn: str,
    label: str,
    redis: str | None = None,
    peer_paths: list[str] | None = None,
) -> None:
    from resilient_circuit.storage import PostgresStorage

    modes = modes_for(api, label)
    report.data["info"]["pg_modes"] = list(modes)
    host, port = pg_host_port(dsn)
    with RoundTripCounter(host, port) as counter:
        proxied = pg_conninfo(dsn, host="127.0.0.1", port=str(counter.port))
        for mode, kwargs in modes.items():
            tag = mode_tag(mode)
            # Closed when the mode is done: a store left open keeps its LISTEN
            # connection's liveness round trips going, which the proxy would count
            # against the next mode's windows.
            opened: list[Any] = []

            def build(
                target: str,
                suffix: str,
                tag: str = tag,
                kwargs: dict[str, Any] = kwargs,
                opened: list[Any] = opened,
            ) -> Any:
                storage = PostgresStorage(target, namespace="bench")
                opened.append(storage)
                policy = api.policy(f"bench-pg-{tag}-{suffix}", storage, Fraction(1, 10), **kwargs)
                if kwargs.get("admission") == "cached" and not storage.wait_listening(5):
                    raise RuntimeError("the LISTEN connection did not come up within 5 s")
                return policy

            name = f"pg.{tag}.success"
            with report.scenario(name):
                result = latencies(build(dsn, "s")(noop))
                result.update(count_round_trips(counter, build(proxied, "sp")(noop)))
                result["mode"] = mode
                report.ok(name, result)

            name = f"pg.{tag}.rejection"
            with report.scenario(name):
                policy = build(dsn, "r")
                protected = policy(noop)
                policy.status = api.State.OPEN
                expect_rejection(api, protected)
                result = latencies(protected)
                # The same rejection as an overhead (no timer inside the loop): the
                # "1 µs per rejection" target is about the library, not the clock.
                result["overhead_ns"] = overhead(noop, protected)["ns"]
                policy = build(proxied, "rp")
                protected = policy(noop)
                policy.status = api.State.OPEN
                result.update(open_round_trips(api, counter, protected))
                result["mode"] = mode
                report.ok(name, result)
            for storage in opened:
                close = getattr(storage, "close", None)  # 0.8.6's store has none
                if close is not None:
                    close()

        if label == "ours":
            import pg_extra

            pg_extra.scenarios(api, report, dsn, counter, modes, redis, tuple(peer_paths or ()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True, help="ours | rc086: which set of modes")
    parser.add_argument("--pg-dsn", help="run the PostgreSQL scenarios against this DSN")
    parser.add_argument("--part", choices=("all", "memory", "pg"), default="all")
    parser.add_argument("--redis", help="HOST:PORT: time pybreaker on Redis with our call")
    parser.add_argument(
        "--peer-path", action="append", default=[], help="pybreaker's site-packages (repeatable)"
    )
    args = parser.parse_args()

    try:
        api = Api()
    except Exception as exc:
        report = Report("resilient_circuit")
        report.fail("*", exc)  # every scenario of this worker shows n/a
        report.emit()
        return
    report = Report("resilient_circuit", api.version, LogWatch("resilient_circuit"))
    report.data["info"]["module_file"] = api.module.__file__

    if args.part in ("all", "memory"):
        breaker_scenarios(api, report, args.label)
        retry_scenarios(api, report)
    if args.pg_dsn and args.part in ("all", "pg"):
        try:
            postgres_scenarios(api, report, args.pg_dsn, args.label, args.redis, args.peer_path)
        except Exception as exc:
            report.fail("pg.*", exc)
    report.emit()


if __name__ == "__main__":
    main()
