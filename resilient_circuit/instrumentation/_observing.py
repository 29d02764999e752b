"""A breaker handle that reports what passes through it, for policies with hooks.

The decorators' hot path stays as it is: a policy whose calls are observed runs the
same driver around this handle instead of the store's, and the handle turns the
admission and the recorded outcome into events. The call's duration runs from its
admission to its record (a context variable carries the start, so concurrent threads
and tasks each time their own call).
"""

from __future__ import annotations

import contextvars
import sys
from time import perf_counter
from typing import TYPE_CHECKING, Any

from resilient_circuit._machine import Admission
from resilient_circuit.instrumentation.hooks import (
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSlow,
    CallSucceeded,
    emit,
)

if TYPE_CHECKING:
    from resilient_circuit.circuit_breaker import CircuitProtectorPolicy
    from resilient_circuit.storage.base import Breaker, Observed

__all__ = ("ObservingBreaker",)


class ObservingBreaker:
    """Forwards every operation to ``inner``; reports admissions and outcomes."""

    __slots__ = ("_policy", "_started", "inner")

    def __init__(self, inner: Breaker, policy: CircuitProtectorPolicy) -> None:
        self.inner = inner
        self._policy = policy
        self._started: contextvars.ContextVar[float] = contextvars.ContextVar(
            f"rc_observed_{id(self)}", default=0.0
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def acquire(self) -> Admission:
        admission = self.inner.acquire()
        self._admitted(admission)
        return admission

    async def aacquire(self) -> Admission:
        admission = await self.inner.aacquire()
        self._admitted(admission)
        return admission

    def record(self, success: bool, generation: int | None, *rest: Any) -> Observed:
        reply = self.inner.record(success, generation, *rest)
        self._recorded(success, reply, rest)
        return reply

    async def arecord(self, success: bool, generation: int | None, *rest: Any) -> Observed:
        reply = await self.inner.arecord(success, generation, *rest)
        self._recorded(success, reply, rest)
        return reply

    def release(self, generation: int | None) -> Observed:
        reply = self.inner.release(generation)
        self._released()
        return reply

    async def arelease(self, generation: int | None) -> Observed:
        reply = await self.inner.arelease(generation)
        self._released()
        return reply

    def _admitted(self, admission: Admission) -> None:
        if admission.permitted:
            self._started.set(perf_counter())
            return
        policy = self._policy
        wait = admission.retry_after
        emit(
            CallRejected(
                policy.namespace,
                policy.resource_key,
                admission.state,
                None if wait is None else wait / 1e9,
            ),
            policy.hooks,
        )

    def _recorded(self, success: bool, reply: Observed, rest: tuple[Any, ...]) -> None:
        duration = perf_counter() - self._started.get()
        policy = self._policy
        ns, key, hooks = policy.namespace, policy.resource_key, policy.hooks
        if success:
            emit(CallSucceeded(ns, key, duration, reply.state), hooks)
        else:
            # record() runs inside the driver's ``except`` block: this is the call's error.
            emit(CallFailed(ns, key, duration, reply.state, sys.exc_info()[1]), hooks)
        slow_ns = policy.config.slow_call_duration_ns
        # Slow as the store judges it: by the duration the driver sent with the outcome.
        took_ns = rest[0] if rest else None
        if slow_ns is not None and took_ns is not None and took_ns > slow_ns:
            emit(CallSlow(ns, key, took_ns / 1e9, slow_ns / 1e9), hooks)

    def _released(self) -> None:
        # Permits are released for ignored exceptions and for interrupted calls
        # (KeyboardInterrupt, cancellation); only the former are ignored outcomes. Both
        # happen while the exception is being handled.
        exc = sys.exc_info()[1]
        policy = self._policy
        if isinstance(exc, Exception) and policy.ignore and isinstance(exc, policy.ignore):
            duration = perf_counter() - self._started.get()
            emit(CallIgnored(policy.namespace, policy.resource_key, duration, exc), policy.hooks)
