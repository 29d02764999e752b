"""Worker for circuitbreaker (in memory only; it has no shared storage).

python worker_circuitbreaker.py
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import circuitbreaker
from _harness import Report, failure_overhead, flaky, noop, overhead, profile_calls

NEVER = 10**9  # a failure count the benchmark never reaches: the breaker stays CLOSED


def main() -> None:
    report = Report("circuitbreaker", version("circuitbreaker"))

    with report.scenario("breaker.success"):
        breaker = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60)
        report.ok("breaker.success", overhead(noop, breaker(noop)))
        report.ok("profile.success", profile_calls(breaker(noop)))

    with report.scenario("breaker.failure"):
        # The 1:1 failure/success stream every breaker here gets (see failure_overhead).
        breaker = circuitbreaker.CircuitBreaker(failure_threshold=NEVER, recovery_timeout=60)
        result = failure_overhead(breaker)
        if not breaker.closed:
            raise RuntimeError("breaker left CLOSED during the failure scenario")
        report.ok("breaker.failure", result)
        report.ok("profile.failure", profile_calls(breaker(flaky()), flaky()))

    with report.scenario("breaker.rejection"):
        # No public "open" switch: one failure with a threshold of one trips it.
        breaker = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
        protected = breaker(noop)
        trip: Any = breaker(flaky())
        try:
            trip()
        except ValueError:
            pass
        try:
            protected()
        except circuitbreaker.CircuitBreakerError:
            report.ok("breaker.rejection", overhead(noop, protected))
            report.ok("profile.rejection", profile_calls(protected))
        else:
            raise RuntimeError("the breaker did not reject a call while OPEN")

    report.emit()


if __name__ == "__main__":
    main()
