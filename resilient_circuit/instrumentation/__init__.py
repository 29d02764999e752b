"""Hooks for every event a policy or a store reports, and metrics built on them.

``add_hook``/``remove_hook``/``set_hooks`` install hooks for the whole process; a
policy's ``hooks=[...]`` for that policy only. The adapters are optional extras,
imported only when used: ``resilient_circuit.instrumentation.prometheus``
(``pip install 'resilient_circuit[prometheus]'``) and
``resilient_circuit.instrumentation.otel`` (``'resilient_circuit[otel]'``).
"""

from __future__ import annotations

from resilient_circuit.instrumentation.hooks import (
    CallDuringOutage,
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSlow,
    CallSucceeded,
    Event,
    Hook,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
    StorageAvailable,
    StorageOutageEnded,
    StorageOutageStarted,
    TransitionSource,
    add_hook,
    get_hooks,
    remove_hook,
    set_hooks,
)

__all__ = (
    "CallDuringOutage",
    "CallFailed",
    "CallIgnored",
    "CallRejected",
    "CallSlow",
    "CallSucceeded",
    "Event",
    "Hook",
    "RetryGaveUp",
    "RetryScheduled",
    "StateChanged",
    "StorageAvailable",
    "StorageOutageEnded",
    "StorageOutageStarted",
    "TransitionSource",
    "add_hook",
    "get_hooks",
    "remove_hook",
    "set_hooks",
)
