"""OpenTelemetry metrics for this process's calls, through the OpenTelemetry API.

``pip install 'resilient_circuit[otel]'`` brings ``opentelemetry-api`` only: the SDK,
its exporters and its meter provider are the application's. ``install()`` adds an
``OpenTelemetryMetrics`` hook recording the same instruments as the Prometheus
adapter (names without the ``_total`` suffix the Prometheus exporter adds):
``resilient_circuit_calls``, ``resilient_circuit_slow_calls``,
``resilient_circuit_call_duration_seconds``, ``resilient_circuit_state``,
``resilient_circuit_transitions``, ``resilient_circuit_retries`` and
``resilient_circuit_storage_up``, with the same attributes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from resilient_circuit._machine import CircuitState
from resilient_circuit.instrumentation.hooks import (
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSlow,
    CallSucceeded,
    Event,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
    StorageOutageEnded,
    StorageOutageStarted,
    add_hook,
)

__all__ = ("OpenTelemetryMetrics", "install")

_STATES = tuple(s.value for s in CircuitState)


class OpenTelemetryMetrics:
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

    def __call__(self, event: Event) -> None:
        kind = type(event)
        if kind is CallSucceeded or kind is CallFailed:
            e: Any = event
            where = {"namespace": e.namespace, "key": e.key}
            outcome = "success" if kind is CallSucceeded else "failure"
            self.calls.add(1, {**where, "outcome": outcome})
            self.duration.record(e.duration, where)
            self._set_state(e.namespace, e.key, e.state.value)
        elif isinstance(event, CallRejected):
            self.calls.add(
                1, {"namespace": event.namespace, "key": event.key, "outcome": "rejected"}
            )
            self._set_state(event.namespace, event.key, event.state.value)
        elif isinstance(event, CallIgnored):
            where = {"namespace": event.namespace, "key": event.key}
            self.calls.add(1, {**where, "outcome": "ignored"})
            self.duration.record(event.duration, where)
        elif isinstance(event, CallSlow):
            self.slow_calls.add(1, {"namespace": event.namespace, "key": event.key})
        elif isinstance(event, StateChanged):
            self.transitions.add(
                1,
                {
                    "namespace": event.namespace,
                    "key": event.key,
                    "from": event.old.value,
                    "to": event.new.value,
                },
            )
            self._set_state(event.namespace, event.key, event.new.value)
        elif isinstance(event, RetryScheduled):
            self.retries.add(1, {"function": event.function, "outcome": "retry", "reason": ""})
        elif isinstance(event, RetryGaveUp):
            self.retries.add(
                1, {"function": event.function, "outcome": "gave_up", "reason": event.reason}
            )
        elif isinstance(event, StorageOutageStarted | StorageOutageEnded):
            with self._lock:
                self._stores[event.store] = 0 if isinstance(event, StorageOutageStarted) else 1

    def _set_state(self, namespace: str, key: str, state: str) -> None:
        with self._lock:
            self._states[(namespace, key)] = state

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
