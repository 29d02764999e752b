"""What the Prometheus and OpenTelemetry adapters share: the metric update each event
makes. An adapter implements the recording methods on its own metrics library."""

from __future__ import annotations

from typing import Any

from resilient_circuit.instrumentation import hooks as ev

__all__ = ("MetricsHook",)


class MetricsHook:
    """A hook turning each event into calls of the recording methods below."""

    def __call__(self, event: ev.Event) -> None:
        kind = type(event)
        # The two most frequent events first, by exact type: a hook runs on every call.
        if kind is ev.CallSucceeded or kind is ev.CallFailed:
            e: Any = event
            outcome = "success" if kind is ev.CallSucceeded else "failure"
            self.count_call(e.namespace, e.key, outcome, e.duration)
            self.set_state(e.namespace, e.key, e.state.value)
        elif isinstance(event, ev.CallRejected):
            self.count_call(event.namespace, event.key, "rejected", None)
            self.set_state(event.namespace, event.key, event.state.value)
        elif isinstance(event, ev.CallIgnored):
            self.count_call(event.namespace, event.key, "ignored", event.duration)
        elif isinstance(event, ev.CallSlow):
            self.count_slow_call(event.namespace, event.key)
        elif isinstance(event, ev.StateChanged):
            old, new = event.old.value, event.new.value
            self.count_transition(event.namespace, event.key, old, new)
            self.set_state(event.namespace, event.key, new)
        elif isinstance(event, ev.RetryScheduled):
            self.count_retry(event.function, "retry", "")
        elif isinstance(event, ev.RetryGaveUp):
            self.count_retry(event.function, "gave_up", event.reason)
        elif isinstance(event, ev.CallDuringOutage):
            decision = "proceeded" if event.permitted else "refused"
            self.count_outage_call(event.namespace, event.key, event.mode, decision)
        elif isinstance(event, ev.StorageOutageStarted):
            self.set_storage_up(event.store, 0)
        elif isinstance(event, ev.StorageAvailable | ev.StorageOutageEnded):
            self.set_storage_up(event.store, 1)

    def count_call(self, namespace: str, key: str, outcome: str, duration: float | None) -> None:
        """One call by outcome; ``duration`` (seconds) for the calls that ran."""
        raise NotImplementedError

    def count_slow_call(self, namespace: str, key: str) -> None:
        raise NotImplementedError

    def set_state(self, namespace: str, key: str, state: str) -> None:
        """The state this process last saw the breaker in."""
        raise NotImplementedError

    def count_transition(self, namespace: str, key: str, old: str, new: str) -> None:
        raise NotImplementedError

    def count_retry(self, function: str, outcome: str, reason: str) -> None:
        raise NotImplementedError

    def count_outage_call(self, namespace: str, key: str, mode: str, decision: str) -> None:
        """A call whose admission the store could not answer: ``decision`` is
        ``proceeded`` or ``refused``, as ``mode`` (on_storage_error) said."""
        raise NotImplementedError

    def set_storage_up(self, store: str, up: int) -> None:
        raise NotImplementedError
