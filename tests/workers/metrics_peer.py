"""A second process for the metrics tests: scripted calls on one shared breaker.

Usage: python -m tests.workers.metrics_peer DSN NAMESPACE KEY OUTCOMES
OUTCOMES is a string of S (success) and F (failure). Prints this process's own
Prometheus exposition (its PrometheusMetrics hook) on stdout.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from fractions import Fraction

from prometheus_client import CollectorRegistry, generate_latest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.instrumentation import prometheus
from resilient_circuit.storage import PostgresStorage


class Down(Exception):
    pass


def main() -> None:
    dsn, namespace, key, outcomes = sys.argv[1:5]
    registry = CollectorRegistry()
    prometheus.install(registry)
    store = PostgresStorage(dsn, namespace=namespace)
    policy = CircuitProtectorPolicy(
        resource_key=key,
        storage=store,
        failure_limit=Fraction(1, 2),
        window_size=4,
        cooldown=timedelta(minutes=5),
    )

    @policy
    def call(ok: bool) -> None:
        if not ok:
            raise Down

    for outcome in outcomes:
        try:
            call(outcome == "S")
        except Down:
            pass
    store.close()
    sys.stdout.write(generate_latest(registry).decode())


if __name__ == "__main__":
    main()
