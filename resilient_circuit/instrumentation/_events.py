"""The one place the library's modules report events through; each helper is cheap
when no hook is installed and is called off the hot path (or once per decoration)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient_circuit._machine import CircuitState
from resilient_circuit.instrumentation.hooks import (
    CallDuringOutage,
    RetryGaveUp,
    RetryScheduled,
    StateChanged,
    StorageAvailable,
    StorageOutageEnded,
    StorageOutageStarted,
    TransitionSource,
    emit,
    installed,
    registry,
)

if TYPE_CHECKING:
    from resilient_circuit.circuit_breaker import CircuitProtectorPolicy
    from resilient_circuit.storage.base import Breaker

__all__ = (
    "during_outage",
    "gave_up",
    "observing",
    "outage_ended",
    "outage_started",
    "registry",
    "retried",
    "storage_available",
    "switch",
    "transition",
)

# What an observed driver checks instead: never any hooks, so it never diverts to itself.
_NEVER: list[Any] = []


def switch(divert: object) -> list[Any]:
    """What a decorator tests per call: the installed hooks if it may divert, else nothing."""
    return _NEVER if divert is None else installed


def observing(policy: CircuitProtectorPolicy) -> Breaker:
    """The policy's breaker handle, reporting each admission and outcome."""
    from resilient_circuit.instrumentation._observing import ObservingBreaker

    return ObservingBreaker(policy._bound(), policy)  # type: ignore[return-value]


def transition(
    policy: CircuitProtectorPolicy,
    old: CircuitState,
    new: CircuitState,
    generation: int,
    source: TransitionSource,
) -> None:
    if policy.hooks or registry.hooks:
        emit(
            StateChanged(policy.namespace, policy.resource_key, old, new, generation, source),
            policy.hooks,
        )


def during_outage(policy: CircuitProtectorPolicy, permitted: bool) -> None:
    if policy.hooks or registry.hooks:
        event = CallDuringOutage(
            policy.namespace, policy.resource_key, policy.on_storage_error, permitted
        )
        emit(event, policy.hooks)


def function_name(func: Any) -> str:
    """``module.qualname`` of a protected function, the label retries are counted under."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{name}"


def retried(
    hooks: tuple[Any, ...], func: Any, attempt: int, delay: float, exc: BaseException | None
) -> None:
    if hooks or registry.hooks:
        emit(RetryScheduled(function_name(func), attempt, delay, exc), hooks)


def gave_up(
    hooks: tuple[Any, ...], func: Any, attempts: int, reason: str, exc: BaseException | None
) -> None:
    if hooks or registry.hooks:
        emit(RetryGaveUp(function_name(func), attempts, reason, exc), hooks)


def outage_started(store: str, error: str) -> None:
    if registry.hooks:
        emit(StorageOutageStarted(store, error))


def outage_ended(store: str, downtime: float) -> None:
    if registry.hooks:
        emit(StorageOutageEnded(store, downtime))


def storage_available(store: str) -> None:
    if registry.hooks:
        emit(StorageAvailable(store))
