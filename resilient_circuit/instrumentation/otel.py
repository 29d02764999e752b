"""OpenTelemetry metrics for this process's calls, through the OpenTelemetry API.

``pip install 'resilient_circuit[otel]'`` brings ``opentelemetry-api`` only: the SDK,
its exporters and its meter provider are the application's. ``install()`` adds an
``OpenTelemetryMetrics`` hook recording the same instruments as the Prometheus
adapter (names without the ``_total`` suffix the Prometheus exporter adds):
``resilient_circuit_calls``, ``resilient_circuit_slow_calls``,
``resilient_circuit_call_duration_seconds``, ``resilient_circuit_state``,
``resilient_circuit_transitions``, ``resilient_circuit_retries``,
``resilient_circuit_storage_outage_calls`` and ``resilient_circuit_storage_up``, with
the same attributes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from resilient_circuit._machine import CircuitState
from resilient_circuit.instrumentation._metrics import MetricsHook
from resilient_circuit.instrumentation.hooks import add_hook

__all__ = ("OpenTelemetryMetrics", "install")

_STATES = tuple(s.value for s in CircuitState)


class OpenTelemetryMetrics(MetricsHook):
    """A hook recording call, state, retry and storage metrics on an OpenTelemetry meter."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        from resilient_circuit import __version__

        meter = metrics.get_meter("resilient_circuit", __version__, meter_provider)
        self.calls = meter.create_counter(
            "resilient_circuit_calls", unit="{call}", description="Calls by outcome."
        )
        self.slow_calls = meter.create_counter(
            "resilient_circuit_slow_calls",
            unit="{call}",
            description="Recorded calls slower than the slow-call duration.",
        )
        self.duration = meter.create_histogram(
            "resilient_circuit_call_duration_seconds",
            unit="s",
            description="Duration of admitted calls, from admission to record.",
        )
        self.transitions = meter.create_counter(
            "resilient_circuit_transitions",
            unit="{transition}",
            description="Breaker transitions this process made or observed.",
        )
        self.retries = meter.create_counter(
            "resilient_circuit_retries",
            unit="{retry}",
            description="Retries scheduled (outcome=retry) and retry policies giving up.",
        )
        self.outage_calls = meter.create_counter(
            "resilient_circuit_storage_outage_calls",
            unit="{call}",
            description="Calls the breaker store could not answer for, by on_storage_error"
            " mode and decision (proceeded or refused).",
        )
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], str] = {}
        self._stores: dict[str, int] = {}
        meter.create_observable_gauge(
            "resilient_circuit_state",
            callbacks=[self._observe_states],
            description="1 for the state this process last saw a breaker in, 0 for the others.",
        )
        meter.create_observable_gauge(
            "resilient_circuit_storage_up",
            callbacks=[self._observe_stores],
            description="1 while the breaker store answers, 0 during an outage.",
        )

    def count_call(self, namespace: str, key: str, outcome: str, duration: float | None) -> None:
        where = {"namespace": namespace, "key": key}
        self.calls.add(1, {**where, "outcome": outcome})
        if duration is not None:
            self.duration.record(duration, where)

    def count_slow_call(self, namespace: str, key: str) -> None:
        self.slow_calls.add(1, {"namespace": namespace, "key": key})

    def set_state(self, namespace: str, key: str, state: str) -> None:
        with self._lock:
            self._states[(namespace, key)] = state

    def count_transition(self, namespace: str, key: str, old: str, new: str) -> None:
        self.transitions.add(1, {"namespace": namespace, "key": key, "from": old, "to": new})

    def count_retry(self, function: str, outcome: str, reason: str) -> None:
        self.retries.add(1, {"function": function, "outcome": outcome, "reason": reason})

    def count_outage_call(self, namespace: str, key: str, mode: str, decision: str) -> None:
        where = {"namespace": namespace, "key": key}
        self.outage_calls.add(1, {**where, "mode": mode, "decision": decision})

    def set_storage_up(self, store: str, up: int) -> None:
        with self._lock:
            self._stores[store] = up

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            states = list(self._states.items())
        for (namespace, key), current in states:
            for name in _STATES:
                yield Observation(
                    1 if name == current else 0,
                    {"namespace": namespace, "key": key, "state": name},
                )

    def _observe_stores(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            stores = list(self._stores.items())
        for store, up in stores:
            yield Observation(up, {"store": store})


def install(meter_provider: MeterProvider | None = None) -> OpenTelemetryMetrics:
    """Create an ``OpenTelemetryMetrics`` and install it for the process."""
    hook = OpenTelemetryMetrics(meter_provider)
    add_hook(hook)
    return hook
