"""Worker for pybreaker: in-memory breaker, and its CircuitRedisStorage against Redis.

python worker_pybreaker.py [--redis HOST:PORT] [--part all|memory|redis]
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from typing import Any

import pybreaker
from _harness import (
    Report,
    RoundTripCounter,
    count_round_trips,
    failure_overhead,
    flaky,
    latencies,
    noop,
    overhead,
    profile_calls,
)

NEVER = 10**9  # a failure count the benchmark never reaches: the breaker stays CLOSED


def expect_rejection(fn: Any) -> None:
    try:
        fn()
    except pybreaker.CircuitBreakerError:
        return
    raise RuntimeError("the breaker did not reject a call while OPEN")


def memory_scenarios(report: Report) -> None:
    with report.scenario("breaker.success"):
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        report.ok("breaker.success", overhead(noop, breaker(noop)))
        report.ok("profile.success", profile_calls(breaker(noop)))

    with report.scenario("breaker.failure"):
        # Same 1:1 failure/success stream as for every breaker here (see
        # failure_overhead); pybreaker resets its count on success and never trips.
        breaker = pybreaker.CircuitBreaker(fail_max=NEVER, reset_timeout=60)
        result = failure_overhead(breaker)
        if breaker.current_state != pybreaker.STATE_CLOSED:
            raise RuntimeError("breaker left CLOSED during the failure scenario")
        report.ok("breaker.failure", result)
        report.ok("profile.failure", profile_calls(breaker(flaky()), flaky()))

    with report.scenario("breaker.rejection"):
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        protected = breaker(noop)
        breaker.open()
        expect_rejection(protected)
        report.ok("breaker.rejection", overhead(noop, protected))
        report.ok("profile.rejection", profile_calls(protected))


def redis_scenarios(report: Report, host: str, port: int) -> None:
    import redis

    direct = redis.Redis(host=host, port=port)
    report.data["info"]["redis_version"] = direct.info("server")["redis_version"]
    report.data["info"]["redis_client"] = redis.__version__
    with RoundTripCounter(host, port) as counter:
        proxied = redis.Redis(host="127.0.0.1", port=counter.port)
        floors = {
            "redis.floor.ping": lambda client: client.ping,
            "redis.floor.incr": lambda client: lambda: client.incr("bench:floor"),
        }
        for name, make in floors.items():
            with report.scenario(name):
                result = latencies(make(direct))
                result.update(count_round_trips(counter, make(proxied)))
                report.ok(name, result)

        def breaker(client: Any, key: str, open_it: bool = False) -> Any:
            # A fresh namespace per breaker: state left in Redis by an earlier run
            # (CLOSED or OPEN) would otherwise be picked up.
            client.delete(*(f"{key}:pybreaker:{k}" for k in _KEYS))
            storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=key)
            cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)
            if open_it:
                cb.open()
            return cb(noop)

        with report.scenario("redis.pybreaker.success"):
            result = latencies(breaker(direct, "bench-s"))
            result.update(count_round_trips(counter, breaker(proxied, "bench-sp")))
            report.ok("redis.pybreaker.success", result)

        with report.scenario("redis.pybreaker.rejection"):
            protected = breaker(direct, "bench-r", open_it=True)
            expect_rejection(protected)
            result = latencies(protected)
            result.update(count_round_trips(counter, breaker(proxied, "bench-rp", open_it=True)))
            report.ok("redis.pybreaker.rejection", result)


_KEYS = ("fail_counter", "success_counter", "state", "opened_at")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", help="HOST:PORT of a Redis server for CircuitRedisStorage")
    parser.add_argument("--part", choices=("all", "memory", "redis"), default="all")
    args = parser.parse_args()
    report = Report("pybreaker", version("pybreaker"))
    if args.part in ("all", "memory"):
        memory_scenarios(report)
    if args.redis and args.part in ("all", "redis"):
        host, _, port = args.redis.rpartition(":")
        try:
            redis_scenarios(report, host, int(port))
        except Exception as exc:
            report.fail("redis.*", exc)
    report.emit()


if __name__ == "__main__":
    main()
