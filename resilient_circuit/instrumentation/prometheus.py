"""Prometheus metrics: a hook for this process's calls, and a collector for the fleet.

``pip install 'resilient_circuit[prometheus]'``. ``install()`` adds a
``PrometheusMetrics`` hook that keeps, in a ``prometheus_client`` registry:

- ``resilient_circuit_calls_total{namespace,key,outcome}`` (success, failure,
  rejected, ignored), ``resilient_circuit_slow_calls_total{namespace,key}``
- ``resilient_circuit_call_duration_seconds{namespace,key}`` (histogram)
- ``resilient_circuit_state{namespace,key,state}`` (1 for the state last seen, else 0)
- ``resilient_circuit_transitions_total{namespace,key,from,to}``
- ``resilient_circuit_retries_total{function,outcome,reason}`` (outcome ``retry`` for a
  scheduled retry, ``gave_up`` with its reason)
- ``resilient_circuit_storage_outage_calls_total{namespace,key,mode,decision}`` (calls
  the store could not answer for: ``proceeded`` or ``refused`` per ``on_storage_error``)
- ``resilient_circuit_storage_up{store}`` (1 from the store's first answer, 0 during
  an outage)

``FleetCollector`` exports every breaker and retry budget of the shared store (the
namespaces the database role may see) from the status view and ``rc_budget_status()``,
with one query per scrape, so any one replica, or ``resilient-circuit-cli metrics``,
can export the whole fleet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from resilient_circuit._machine import CircuitState
from resilient_circuit.instrumentation._metrics import MetricsHook
from resilient_circuit.instrumentation.hooks import add_hook

__all__ = ("FleetCollector", "PrometheusMetrics", "install")

logger = logging.getLogger("resilient_circuit.instrumentation")

_STATES = tuple(s.value for s in CircuitState)


class PrometheusMetrics(MetricsHook):
    """A hook keeping this process's call, state, retry and storage metrics."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        key = ["namespace", "key"]
        self.calls = Counter(
            "resilient_circuit_calls",
            "Calls through a circuit breaker, by outcome.",
            [*key, "outcome"],
            registry=registry,
        )
        self.slow_calls = Counter(
            "resilient_circuit_slow_calls",
            "Recorded calls slower than the breaker's slow-call duration.",
            key,
            registry=registry,
        )
        self.duration = Histogram(
            "resilient_circuit_call_duration_seconds",
            "Duration of the calls a breaker admitted, from admission to record.",
            key,
            registry=registry,
        )
        self.state = Gauge(
            "resilient_circuit_state",
            "1 for the state this process last saw a breaker in, 0 for the others.",
            [*key, "state"],
            registry=registry,
        )
        self.transitions = Counter(
            "resilient_circuit_transitions",
            "Breaker transitions this process made or observed.",
            [*key, "from", "to"],
            registry=registry,
        )
        self.retries = Counter(
            "resilient_circuit_retries",
            "Retries scheduled (outcome=retry) and retry policies that gave up (gave_up).",
            ["function", "outcome", "reason"],
            registry=registry,
        )
        self.outage_calls = Counter(
            "resilient_circuit_storage_outage_calls",
            "Calls the breaker store could not answer for, by on_storage_error mode and"
            " decision (proceeded or refused).",
            [*key, "mode", "decision"],
            registry=registry,
        )
        self.storage_up = Gauge(
            "resilient_circuit_storage_up",
            "1 while the breaker store answers, 0 during an outage.",
            ["store"],
            registry=registry,
        )
        self._seen: dict[tuple[str, str], str] = {}

    def count_call(self, namespace: str, key: str, outcome: str, duration: float | None) -> None:
        self.calls.labels(namespace, key, outcome).inc()
        if duration is not None:
            self.duration.labels(namespace, key).observe(duration)

    def count_slow_call(self, namespace: str, key: str) -> None:
        self.slow_calls.labels(namespace, key).inc()

    def set_state(self, namespace: str, key: str, state: str) -> None:
        if self._seen.get((namespace, key)) == state:
            return
        self._seen[(namespace, key)] = state
        for name in _STATES:
            self.state.labels(namespace, key, name).set(1 if name == state else 0)

    def count_transition(self, namespace: str, key: str, old: str, new: str) -> None:
        self.transitions.labels(namespace, key, old, new).inc()

    def count_retry(self, function: str, outcome: str, reason: str) -> None:
        self.retries.labels(function, outcome, reason).inc()

    def count_outage_call(self, namespace: str, key: str, mode: str, decision: str) -> None:
        self.outage_calls.labels(namespace, key, mode, decision).inc()

    def set_storage_up(self, store: str, up: int) -> None:
        self.storage_up.labels(store).set(up)


def install(registry: CollectorRegistry = REGISTRY) -> PrometheusMetrics:
    """Create a ``PrometheusMetrics`` in ``registry`` and install it for the process."""
    metrics = PrometheusMetrics(registry)
    add_hook(metrics)
    return metrics


class FleetCollector(Collector):
    """Every breaker's shared state, read from the status view once per scrape.

    ``dsn`` defaults to the library's configuration (``RC_DB_DSN`` or ``RC_DB_*``);
    ``schema`` to ``RC_DB_SCHEMA``, else ``public``. The database role sees only
    its granted namespaces. A failed scrape exports ``resilient_circuit_fleet_up 0``
    (and logs one line until the database answers again) instead of failing the
    scrape of the other metrics in the registry.
    """

    def __init__(
        self, dsn: str | None = None, *, schema: str | None = None, connect_timeout: int = 5
    ) -> None:
        from resilient_circuit._dsn import Dsn
        from resilient_circuit._settings import database_dsn, database_schema

        target = dsn or database_dsn()
        if not target:
            raise ValueError("`dsn` is required when RC_DB_DSN and RC_DB_HOST are not set")
        self._dsn = Dsn(target)
        self.schema = schema or database_schema()
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = threading.Lock()
        self._failing = False
        self._budgets = True  # does the schema have rc_budget_status (until proven not)?

    def __repr__(self) -> str:
        return f"FleetCollector({str(self._dsn)!r}, schema={self.schema!r})"

    def read(self) -> list[Any]:
        """The breakers; raises psycopg's error when the database fails."""
        return self.read_all()[0]

    def read_all(self) -> tuple[list[Any], list[Any]]:
        """The breakers and the retry budgets, in one round trip (the budgets empty on an
        install older than ``rc_budget_status``); raises psycopg's error when the
        database fails."""
        import psycopg

        from resilient_circuit.instrumentation.fleet import read_fleet, read_fleet_and_budgets

        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._dsn.conninfo,
                    autocommit=True,
                    connect_timeout=self.connect_timeout,
                    **self._dsn.connect_kwargs(),
                )
            try:
                if self._budgets:
                    try:
                        return read_fleet_and_budgets(self._conn, self.schema)
                    except psycopg.errors.UndefinedFunction:
                        self._budgets = False  # not upgraded yet: breakers alone from now on
                return read_fleet(self._conn, self.schema), []
            except psycopg.Error:
                self._conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def describe(self) -> list[Metric]:
        # Tells the registry the names without a database query at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        from resilient_circuit.storage.postgres.outage import one_line

        started = time.perf_counter()
        up = GaugeMetricFamily(
            "resilient_circuit_fleet_up", "1 when the last scrape read the status view."
        )
        try:
            rows, budgets = self.read_all()
        except Exception as exc:
            if not self._failing:
                self._failing = True
                logger.warning("fleet collector cannot read the status view: %s", one_line(exc))
            up.add_metric([], 0)
            yield up
            return
        self._failing = False
        up.add_metric([], 1)
        yield up
        yield from _fleet_metrics(rows)
        yield from _budget_metrics(budgets)
        took = GaugeMetricFamily(
            "resilient_circuit_fleet_scrape_duration_seconds",
            "How long the status view's query took.",
        )
        took.add_metric([], time.perf_counter() - started)
        yield took


def _fleet_metrics(rows: list[Any]) -> Iterator[Metric]:
    key = ["namespace", "key"]
    state = GaugeMetricFamily(
        "resilient_circuit_fleet_state",
        "1 for the breaker's shared state, 0 for the others.",
        labels=[*key, "state"],
    )
    calls = CounterMetricFamily(
        "resilient_circuit_fleet_calls",
        "Outcomes the breaker recorded over its lifetime, from every process.",
        labels=[*key, "outcome"],
    )
    failure_count = GaugeMetricFamily(
        "resilient_circuit_fleet_failure_count", "Consecutive failures.", labels=key
    )
    window_failures = GaugeMetricFamily(
        "resilient_circuit_fleet_window_failures",
        "Failures in the current phase's window.",
        labels=key,
    )
    window_calls = GaugeMetricFamily(
        "resilient_circuit_fleet_window_calls",
        "Outcomes in the current phase's window.",
        labels=key,
    )
    window_slow = GaugeMetricFamily(
        "resilient_circuit_fleet_window_slow_calls",
        "Slow calls in the current phase's window.",
        labels=key,
    )
    held = GaugeMetricFamily(
        "resilient_circuit_fleet_held",
        "1 while an operator holds the breaker OPEN or DISABLED.",
        labels=key,
    )
    generation = GaugeMetricFamily(
        "resilient_circuit_fleet_generation",
        "Transitions the breaker has made (its generation).",
        labels=key,
    )
    permits = GaugeMetricFamily(
        "resilient_circuit_fleet_permits", "Half-open trial calls in flight.", labels=key
    )
    open_until = GaugeMetricFamily(
        "resilient_circuit_fleet_open_until_timestamp_seconds",
        "When an OPEN breaker's cooldown ends (Unix time).",
        labels=key,
    )
    remaining = GaugeMetricFamily(
        "resilient_circuit_fleet_cooldown_remaining_seconds",
        "Time left in an OPEN breaker's cooldown.",
        labels=key,
    )
    updated = GaugeMetricFamily(
        "resilient_circuit_fleet_updated_timestamp_seconds",
        "When the breaker's row last changed (Unix time).",
        labels=key,
    )
    for row in rows:
        labels = [row.namespace, row.key]
        states = _STATES if row.state in _STATES else (*_STATES, row.state)
        for name in states:
            state.add_metric([*labels, name], 1 if name == row.state else 0)
        calls.add_metric([*labels, "success"], row.successes)
        calls.add_metric([*labels, "failure"], row.failures)
        failure_count.add_metric(labels, row.failure_count)
        window_failures.add_metric(labels, row.window_failures)
        window_calls.add_metric(labels, row.window_calls)
        window_slow.add_metric(labels, row.window_slow)
        held.add_metric(labels, 1 if row.held else 0)
        generation.add_metric(labels, row.generation)
        permits.add_metric(labels, row.permits)
        if row.open_until is not None:
            open_until.add_metric(labels, row.open_until.timestamp())
        if row.cooldown_remaining is not None:
            remaining.add_metric(labels, row.cooldown_remaining.total_seconds())
        updated.add_metric(labels, row.updated_at.timestamp())
    yield from (
        state,
        calls,
        failure_count,
        window_failures,
        window_calls,
        window_slow,
        held,
        generation,
        permits,
        open_until,
        remaining,
        updated,
    )


def _budget_metrics(budgets: list[Any]) -> Iterator[Metric]:
    labels = ["namespace", "budget"]
    balance = GaugeMetricFamily(
        "resilient_circuit_fleet_budget_balance",
        "Tokens a retry budget held when last settled (one pays for one retry).",
        labels=labels,
    )
    floor = GaugeMetricFamily(
        "resilient_circuit_fleet_budget_min_per_second",
        "The retry budget's floor: tokens it refills by itself, per second.",
        labels=labels,
    )
    first_attempts = CounterMetricFamily(
        "resilient_circuit_fleet_budget_first_attempts",
        "First attempts deposited into the retry budget over its life, from every process.",
        labels=labels,
    )
    withdrawals = CounterMetricFamily(
        "resilient_circuit_fleet_budget_withdrawals",
        "Retries the budget allowed (granted) or refused over its life, from every process.",
        labels=[*labels, "outcome"],
    )
    updated = GaugeMetricFamily(
        "resilient_circuit_fleet_budget_updated_timestamp_seconds",
        "When the retry budget was last settled (Unix time).",
        labels=labels,
    )
    for budget in budgets:
        at = [budget.namespace, budget.name]
        balance.add_metric(at, budget.balance)
        floor.add_metric(at, budget.min_per_second)
        first_attempts.add_metric(at, budget.first_attempts)
        withdrawals.add_metric([*at, "granted"], budget.retries)
        withdrawals.add_metric([*at, "refused"], budget.refusals)
        updated.add_metric(at, budget.updated_at.timestamp())
    yield from (balance, floor, first_attempts, withdrawals, updated)
