"""Prometheus and OpenTelemetry metrics after scripted calls from two processes
sharing a breaker in a real PostgreSQL, and the fleet collector's view of it."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError, set_hooks
from resilient_circuit._installer import install
from resilient_circuit.instrumentation import otel, prometheus
from resilient_circuit.instrumentation.prometheus import FleetCollector
from resilient_circuit.storage import PostgresStorage
from tests.conftest import PgRole

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
CONFIG: dict[str, Any] = {
    "failure_limit": Fraction(1, 2),
    "window_size": 4,
    "cooldown": timedelta(minutes=5),
}


@pytest.fixture(autouse=True)
def no_global_hooks() -> Iterator[None]:
    """Each test installs its own adapter and leaves no hook behind."""
    set_hooks(None)
    yield
    set_hooks(None)


class Down(Exception):
    pass


def _peer(
    dsn: str, namespace: str, key: str, outcomes: str
) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Run the scripted calls in another process; its own metrics, parsed."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.workers.metrics_peer", dsn, namespace, key, outcomes],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return _samples(out)


def _samples(text: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], float]:
    found = {}
    for family in registry.collect():
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _key(**labels: str) -> tuple[Any, ...]:
    return tuple(sorted(labels.items()))


def _scripted_first_process(store: PostgresStorage, key: str) -> Callable[[bool], None]:
    policy = CircuitProtectorPolicy(resource_key=key, storage=store, **CONFIG)

    @policy
    def call(ok: bool) -> None:
        if not ok:
            raise Down

    return call


def test_prometheus_metrics_of_two_processes_and_the_fleet(pg_dsn: str) -> None:
    """Process A succeeds twice, B trips the breaker, A is rejected: each process's
    registry counts its own calls and the transition; the fleet collector sees both."""
    registry = CollectorRegistry()
    prometheus.install(registry)
    store = PostgresStorage(pg_dsn, namespace="shop")
    try:
        call = _scripted_first_process(store, "pay")
        call(True)
        call(True)
        peer = _peer(pg_dsn, "shop", "pay", "SFF")
        with pytest.raises(ProtectedCallError):
            call(True)
    finally:
        store.close()

    mine = _scrape(registry)
    at = {"namespace": "shop", "key": "pay"}
    assert mine[("resilient_circuit_calls_total", _key(**at, outcome="success"))] == 2
    assert mine[("resilient_circuit_calls_total", _key(**at, outcome="rejected"))] == 1
    assert ("resilient_circuit_calls_total", _key(**at, outcome="failure")) not in mine
    assert mine[("resilient_circuit_call_duration_seconds_count", _key(**at))] == 2
    moved = _key(**at, **{"from": "CLOSED", "to": "OPEN"})
    assert mine[("resilient_circuit_transitions_total", moved)] == 1
    assert mine[("resilient_circuit_state", _key(**at, state="OPEN"))] == 1
    assert mine[("resilient_circuit_state", _key(**at, state="CLOSED"))] == 0

    assert peer[("resilient_circuit_calls_total", _key(**at, outcome="success"))] == 1
    assert peer[("resilient_circuit_calls_total", _key(**at, outcome="failure"))] == 2
    assert peer[("resilient_circuit_transitions_total", moved)] == 1
    assert peer[("resilient_circuit_state", _key(**at, state="OPEN"))] == 1

    fleet_registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(pg_dsn)
    fleet_registry.register(collector)
    try:
        fleet = _scrape(fleet_registry)
    finally:
        collector.close()
    assert fleet[("resilient_circuit_fleet_up", ())] == 1
    assert fleet[("resilient_circuit_fleet_state", _key(**at, state="OPEN"))] == 1
    assert fleet[("resilient_circuit_fleet_state", _key(**at, state="CLOSED"))] == 0
    assert fleet[("resilient_circuit_fleet_calls_total", _key(**at, outcome="success"))] == 3
    assert fleet[("resilient_circuit_fleet_calls_total", _key(**at, outcome="failure"))] == 2
    assert fleet[("resilient_circuit_fleet_window_failures", _key(**at))] == 2
    assert fleet[("resilient_circuit_fleet_window_calls", _key(**at))] == 4
    assert fleet[("resilient_circuit_fleet_failure_count", _key(**at))] == 2
    assert fleet[("resilient_circuit_fleet_generation", _key(**at))] == 1
    remaining = fleet[("resilient_circuit_fleet_cooldown_remaining_seconds", _key(**at))]
    assert 200 < remaining <= 300
    until = fleet[("resilient_circuit_fleet_open_until_timestamp_seconds", _key(**at))]
    assert until == pytest.approx(time.time() + remaining, abs=30)


def test_opentelemetry_metrics_after_calls_of_two_processes(pg_dsn: str) -> None:
    """An OpenTelemetry in-memory reader sees A's calls, the transition B made, the state."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.install(provider)
    store = PostgresStorage(pg_dsn, namespace="shop")
    try:
        call = _scripted_first_process(store, "stock")
        call(True)
        call(True)
        _peer(pg_dsn, "shop", "stock", "SFF")
        with pytest.raises(ProtectedCallError):
            call(True)
    finally:
        store.close()
    points: dict[tuple[str, tuple[Any, ...]], Any] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = point
    provider.shutdown()
    at = {"namespace": "shop", "key": "stock"}
    assert points[("resilient_circuit_calls", _key(**at, outcome="success"))].value == 2
    assert points[("resilient_circuit_calls", _key(**at, outcome="rejected"))].value == 1
    assert points[("resilient_circuit_call_duration_seconds", _key(**at))].count == 2
    moved = _key(**at, **{"from": "CLOSED", "to": "OPEN"})
    assert points[("resilient_circuit_transitions", moved)].value == 1
    assert points[("resilient_circuit_state", _key(**at, state="OPEN"))].value == 1
    assert points[("resilient_circuit_state", _key(**at, state="CLOSED"))].value == 0


def test_storage_up_is_1_from_the_first_answer_then_follows_outages(pg_dsn: str) -> None:
    """``resilient_circuit_storage_up`` has its sample (1) from a store's first answered
    call, not only from its first outage; calls in an outage are counted by mode."""
    from resilient_circuit.storage.postgres.outage import Outage

    registry = CollectorRegistry()
    prometheus.install(registry)
    store = PostgresStorage(pg_dsn, namespace="shop")
    try:
        _scripted_first_process(store, "up")(True)
    finally:
        store.close()
    up = {
        labels: value
        for (name, labels), value in _scrape(registry).items()
        if name == "resilient_circuit_storage_up"
    }
    assert list(up.values()) == [1]

    outage = Outage("db")
    outage.failed(OSError("gone"))
    assert _scrape(registry)[("resilient_circuit_storage_up", _key(store="db"))] == 0
    outage.succeeded()
    assert _scrape(registry)[("resilient_circuit_storage_up", _key(store="db"))] == 1


def test_calls_during_an_outage_are_counted_by_mode_and_decision() -> None:
    """An unreachable store: a fail-open call proceeds, a fail-closed one is refused,
    and both are counted in ``resilient_circuit_storage_outage_calls_total``."""
    registry = CollectorRegistry()
    prometheus.install(registry)
    store = PostgresStorage("postgresql://app@127.0.0.1:1/db?connect_timeout=2", namespace="shop")
    try:
        for mode in ("open", "closed"):
            call = CircuitProtectorPolicy(
                resource_key=mode,
                storage=store,
                on_storage_error=mode,  # type: ignore[arg-type]
            )(lambda: "done")
            try:
                call()
            except ProtectedCallError:
                pass
    finally:
        store.close()
    found = _scrape(registry)
    name = "resilient_circuit_storage_outage_calls_total"
    at = {"namespace": "shop"}
    assert found[(name, _key(**at, key="open", mode="open", decision="proceeded"))] == 1
    assert found[(name, _key(**at, key="closed", mode="closed", decision="refused"))] == 1


def test_the_fleet_collector_shows_an_app_role_only_its_namespaces(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Scraped as a role granted one namespace, the fleet holds that namespace's breakers only."""
    role = pg_role()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install(conn, app_role=role, namespaces=["shop"])
        for ns in ("shop", "billing"):
            conn.execute("SELECT * FROM rc_record(%s, true, %s)", [f"{ns}-svc", ns])
    collector = FleetCollector(role.dsn(pg_dsn))
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        collector.close()
    keys = {s.labels["key"] for s in families["resilient_circuit_fleet_state"].samples}
    assert keys == {"shop-svc"}


def test_one_scrape_is_one_query(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many breakers, a scrape sends one statement to the database."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for i in range(20):
            conn.execute("SELECT * FROM rc_record(%s, false)", [f"svc-{i}"])
    collector = FleetCollector(pg_dsn)
    statements: list[Any] = []
    real_execute = psycopg.Cursor.execute

    def counting(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(query)
        return real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    try:
        families = {f.name: f for f in collector.collect()}
        assert len(statements) == 1
        families = {f.name: f for f in collector.collect()}
        assert len(statements) == 2
    finally:
        collector.close()
    assert len(families["resilient_circuit_fleet_generation"].samples) == 20


def test_an_unreachable_database_scrapes_as_down_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing scrape exports fleet_up 0 and logs one line (no password), not one per scrape."""
    collector = FleetCollector("postgresql://app:hunter2secret@127.0.0.1:1/db", connect_timeout=2)
    with caplog.at_level(logging.WARNING, logger="resilient_circuit.instrumentation"):
        for _ in range(3):
            families = {f.name: f for f in collector.collect()}
            assert families["resilient_circuit_fleet_up"].samples[0].value == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "hunter2secret" not in lines[0]
    assert "hunter2secret" not in repr(collector)


def test_the_grafana_dashboard_queries_only_exported_metrics(pg_dsn: str) -> None:
    """docs/grafana-dashboard.json is valid JSON and every metric it queries is exported,
    by the hook adapter or by the fleet collector."""
    from prometheus_client import generate_latest

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queried |= set(re.findall(r"resilient_circuit_[a-z_]+", target["expr"]))
    assert len(queried) >= 10
    registry = CollectorRegistry(auto_describe=False)
    prometheus.PrometheusMetrics(registry)
    collector = FleetCollector(pg_dsn)
    registry.register(collector)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_record('svc', false)")
    try:
        exposition = generate_latest(registry).decode()
    finally:
        collector.close()
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.MULTILINE))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "counter":
            names.add(name + "_total")
        if kind == "histogram":
            names |= {name + "_bucket", name + "_count", name + "_sum"}
    assert queried <= names, sorted(queried - names)


def test_the_fleet_shows_a_held_breaker(pg_dsn: str) -> None:
    """A breaker held OPEN by an operator exports fleet_held 1 and no cooldown countdown."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_record('held-svc', true)")
        conn.execute("SELECT * FROM rc_force('held-svc', 'OPEN', 'default', true)")
        conn.execute("SELECT * FROM rc_record('free-svc', true)")
    collector = FleetCollector(pg_dsn)
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        collector.close()
    held = {s.labels["key"]: s.value for s in families["resilient_circuit_fleet_held"].samples}
    assert held == {"held-svc": 1, "free-svc": 0}
    remaining = families["resilient_circuit_fleet_cooldown_remaining_seconds"].samples
    assert [s.labels["key"] for s in remaining] == []
