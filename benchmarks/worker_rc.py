"""Worker for resilient_circuit: this repository's version, or 0.8.6 from the index.

Both share the import name and, by design, the public API, so one worker measures
both; run.py starts it with the interpreter of the right environment. Every
scenario is measured on its own: whatever the imported version cannot do yet is
reported as an error for that scenario (shown as n/a), never a crash of the run.

    python worker_rc.py --label ours [--pg-dsn DSN]
"""

from __future__ import annotations

import argparse
import inspect
from datetime import timedelta
from fractions import Fraction
from typing import Any

from _harness import (
    LogWatch,
    Report,
    RoundTripCounter,
    by_hand,
    count_round_trips,
    failure_overhead,
    flaky,
    latencies,
    mode_tag,
    noop,
    overhead,
    pg_conninfo,
    pg_host_port,
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
    """The PostgreSQL modes to measure for this library.

    Until this repository's policy takes ``admission``/``recording``, its one
    behaviour is measured as "default".
    """
    if label != "ours":
        return OLD_MODES
    if "admission" in inspect.signature(api.Policy).parameters:
        return OUR_MODES
    return {"default": {}}


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


def breaker_scenarios(api: Api, report: Report) -> None:
    with report.scenario("breaker.success"):
        # The configuration a typical user writes: trip at 10% failures over 10 calls.
        policy = api.policy("bench-success", api.InMemoryStorage(), Fraction(1, 10))
        report.ok("breaker.success", overhead(noop, policy(noop)))

    with report.scenario("breaker.failure"):
        # A 9/10 limit never trips on the 1:1 stream (see failure_overhead).
        policy = api.policy("bench-failure", api.InMemoryStorage(), Fraction(9, 10))
        result = failure_overhead(policy)
        expect_closed(api, policy)
        report.ok("breaker.failure", result)

    with report.scenario("breaker.rejection"):
        policy = api.policy("bench-open", api.InMemoryStorage(), Fraction(1, 10))
        protected = policy(noop)
        policy.status = api.State.OPEN
        expect_rejection(api, protected)
        report.ok("breaker.rejection", overhead(noop, protected))

    for size in (10, 1000):
        limit = Fraction(size - 1, size)  # window = denominator; (n-1)/n never trips here
        name = f"window.{size}.success"
        with report.scenario(name):
            policy = api.policy(f"bench-w{size}-s", api.InMemoryStorage(), limit)
            protected = policy(noop)
            timed_loop(protected, size)  # measured with a full window, as in service
            report.ok(name, overhead(noop, protected))
        name = f"window.{size}.failure"
        with report.scenario(name):
            policy = api.policy(f"bench-w{size}-f", api.InMemoryStorage(), limit)
            result = failure_overhead(policy, prefill=size)
            expect_closed(api, policy)
            report.ok(name, result)


def retry_scenarios(api: Api, report: Report) -> None:
    def policy() -> Any:
        return api.Retry(max_retries=3, backoff=api.FixedDelay(timedelta(0)))

    with report.scenario("retry.success"):
        report.ok("retry.success", overhead(noop, policy()(noop)))

    with report.scenario("retry.one_failure"):
        report.ok("retry.one_failure", overhead(by_hand(flaky()), policy()(flaky())))


def postgres_scenarios(api: Api, report: Report, dsn: str, label: str) -> None:
    from resilient_circuit.storage import PostgresStorage

    modes = modes_for(api, label)
    report.data["info"]["pg_modes"] = list(modes)
    host, port = pg_host_port(dsn)
    with RoundTripCounter(host, port) as counter:
        proxied = pg_conninfo(dsn, host="127.0.0.1", port=str(counter.port))
        for mode, kwargs in modes.items():
            tag = mode_tag(mode)

            def build(
                target: str, suffix: str, tag: str = tag, kwargs: dict[str, Any] = kwargs
            ) -> Any:
                storage = PostgresStorage(target, namespace="bench")
                return api.policy(f"bench-pg-{tag}-{suffix}", storage, Fraction(1, 10), **kwargs)

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
                policy = build(proxied, "rp")
                protected = policy(noop)
                policy.status = api.State.OPEN
                result.update(count_round_trips(counter, protected))
                result["mode"] = mode
                report.ok(name, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True, help="ours | rc086: which set of modes")
    parser.add_argument("--pg-dsn", help="run the PostgreSQL scenarios against this DSN")
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

    breaker_scenarios(api, report)
    retry_scenarios(api, report)
    if args.pg_dsn:
        try:
            postgres_scenarios(api, report, args.pg_dsn, args.label)
        except Exception as exc:
            report.fail("pg.*", exc)
    report.emit()


if __name__ == "__main__":
    main()
