"""Hooks: the events each path reports, per policy and for the process, and what a
faulty hook or an absent one costs the call (nothing)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

import resilient_circuit
from resilient_circuit import (
    CallDuringOutage,
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSlow,
    CallSucceeded,
    CircuitProtectorPolicy,
    CircuitState,
    ProtectedCallError,
    RetryGaveUp,
    RetryLimitReached,
    RetryScheduled,
    RetryWithBackoffPolicy,
    StateChanged,
    StorageOutageEnded,
    StorageOutageStarted,
    add_hook,
    get_hooks,
    instrumentation,
    remove_hook,
    set_hooks,
)
from resilient_circuit.storage import InMemoryStorage
from tests._helpers import Clock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


@pytest.fixture(autouse=True)
def no_global_hooks() -> Iterator[None]:
    """Every test starts and ends with no process-wide hook."""
    set_hooks(None)
    yield
    set_hooks(None)


class Boom(Exception):
    pass


def _policy(clock: Clock, hooks: Any = None, **kwargs: Any) -> CircuitProtectorPolicy:
    kwargs.setdefault("failure_limit", Fraction(1, 2))
    kwargs.setdefault("cooldown", timedelta(seconds=10))
    return CircuitProtectorPolicy(
        resource_key="svc",
        namespace="ns",
        storage=InMemoryStorage(clock=clock),
        hooks=hooks,
        **kwargs,
    )


def _fn(policy: CircuitProtectorPolicy) -> Any:
    @policy
    def call(ok: bool = True) -> str:
        if not ok:
            raise Boom("down")
        return "fine"

    return call


def test_a_policy_hook_sees_success_failure_trip_and_rejection() -> None:
    """Per-policy hooks get each call's outcome, the transition it caused and a rejection."""
    events: list[Any] = []
    clock = Clock()
    call = _fn(_policy(clock, hooks=[events.append]))
    call(True)
    with pytest.raises(Boom):
        call(False)
    with pytest.raises(ProtectedCallError):
        call(True)
    kinds = [type(e) for e in events]
    assert kinds == [CallSucceeded, CallFailed, StateChanged, CallRejected]
    ok, failed, changed, rejected = events
    assert (ok.namespace, ok.key, ok.state) == ("ns", "svc", CLOSED)
    assert ok.duration >= 0
    assert isinstance(failed.exception, Boom)
    assert failed.state is OPEN
    assert (changed.old, changed.new, changed.generation, changed.source) == (
        CLOSED,
        OPEN,
        1,
        "call",
    )
    assert rejected.state is OPEN
    assert rejected.retry_after == pytest.approx(10.0)


def test_a_global_hook_added_after_decoration_is_used_and_removal_stops_it() -> None:
    """The process-wide hooks are read per call: adding one reaches existing decorators."""
    events: list[Any] = []
    call = _fn(_policy(Clock()))
    call(True)
    add_hook(events.append)
    assert get_hooks() == (events.append,)
    call(True)
    remove_hook(events.append)
    call(True)
    assert [type(e) for e in events] == [CallSucceeded]


def test_policy_hooks_run_before_global_ones() -> None:
    """A policy's own hooks run first, then the process-wide ones, for the same event."""
    order: list[str] = []
    add_hook(lambda e: order.append("global"))
    call = _fn(_policy(Clock(), hooks=[lambda e: order.append("policy")]))
    call(True)
    assert order == ["policy", "global"]


async def test_async_calls_report_the_same_events() -> None:
    """Coroutine functions report outcomes, transitions and rejections like sync ones."""
    events: list[Any] = []
    policy = _policy(Clock(), hooks=[events.append])

    @policy
    async def call(ok: bool) -> str:
        if not ok:
            raise Boom("down")
        return "fine"

    assert await call(True) == "fine"
    with pytest.raises(Boom):
        await call(False)
    with pytest.raises(ProtectedCallError):
        await call(True)
    assert [type(e) for e in events] == [CallSucceeded, CallFailed, StateChanged, CallRejected]


def test_a_raising_hook_never_breaks_the_call_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A faulty hook is logged once; the call's result, its error and other hooks are intact."""
    seen: list[Any] = []

    def broken(event: Any) -> None:
        raise RuntimeError("hook bug")

    add_hook(broken)
    add_hook(seen.append)
    call = _fn(_policy(Clock(), failure_limit=Fraction(1, 1), cooldown=timedelta(0)))
    with caplog.at_level(logging.ERROR, logger="resilient_circuit.instrumentation"):
        assert call(True) == "fine"
        assert call(True) == "fine"
        with pytest.raises(Boom):
            call(False)
    assert len([r for r in caplog.records if "hook" in r.getMessage()]) == 1
    assert len(seen) >= 3


def test_admin_and_read_transitions_name_their_source() -> None:
    """A forced state is an 'admin' transition; a peer's seen through ``status`` a 'read'."""
    events: list[Any] = []
    storage = InMemoryStorage(clock=Clock())
    mine = CircuitProtectorPolicy(resource_key="svc", storage=storage, hooks=[events.append])
    peer = CircuitProtectorPolicy(resource_key="svc", storage=storage)
    mine.status = OPEN
    peer.status = CLOSED
    assert mine.status is CLOSED
    changes = [(e.old, e.new, e.source) for e in events if isinstance(e, StateChanged)]
    assert changes == [(CLOSED, OPEN, "admin"), (OPEN, CLOSED, "read")]


def test_retry_hooks_see_each_retry_and_the_give_up() -> None:
    """A retry policy reports every scheduled retry and the give-up, naming the function."""
    events: list[Any] = []
    policy = RetryWithBackoffPolicy(max_retries=2, hooks=[events.append])

    @policy
    def always_down() -> None:
        raise Boom("down")

    with pytest.raises(RetryLimitReached):
        always_down()
    assert [type(e) for e in events] == [RetryScheduled, RetryScheduled, RetryGaveUp]
    assert [e.attempt for e in events[:2]] == [1, 2]
    assert events[0].function.endswith("always_down")
    assert (events[2].attempts, events[2].reason) == (3, "attempts")
    assert isinstance(events[2].exception, Boom)


async def test_async_retry_hooks() -> None:
    """Coroutine functions report their retries the same way."""
    events: list[Any] = []
    attempts = iter([False, True])

    @RetryWithBackoffPolicy(max_retries=2, hooks=[events.append])
    async def flaky() -> str:
        if not next(attempts):
            raise Boom("once")
        return "ok"

    assert await flaky() == "ok"
    assert [type(e) for e in events] == [RetryScheduled]


def test_storage_outages_are_reported_to_global_hooks() -> None:
    """An unreachable PostgreSQL store reports the outage's start, naming no password."""
    pytest.importorskip("psycopg")
    from resilient_circuit.storage import PostgresStorage
    from resilient_circuit.storage.postgres.outage import Outage

    events: list[Any] = []
    add_hook(events.append)
    store = PostgresStorage(
        "postgresql://app:hunter2secret@127.0.0.1:1/db?connect_timeout=2", namespace="ns"
    )
    try:
        call = _fn(CircuitProtectorPolicy(resource_key="svc", storage=store))
        assert call(True) == "fine"  # fails open
    finally:
        store.close()
    started = [e for e in events if isinstance(e, StorageOutageStarted)]
    assert len(started) == 1
    assert "hunter2secret" not in repr(started[0])
    outage = Outage("db")
    outage.failed(OSError("gone"))
    outage.succeeded()
    assert isinstance(events[-1], StorageOutageEnded)
    assert events[-1].store == "db"


@pytest.mark.parametrize(
    ("mode", "permitted"), [("open", True), ("closed", False), ("local", True)]
)
def test_calls_during_a_storage_outage_are_reported(mode: str, permitted: bool) -> None:
    """Each call whose admission the store could not answer is one CallDuringOutage,
    naming the policy's on_storage_error and whether the call went ahead."""
    pytest.importorskip("psycopg")
    from resilient_circuit.storage import PostgresStorage

    events: list[Any] = []
    add_hook(events.append)
    store = PostgresStorage("postgresql://app@127.0.0.1:1/db?connect_timeout=2", namespace="ns")
    try:
        policy = CircuitProtectorPolicy(
            resource_key="svc",
            storage=store,
            on_storage_error=mode,  # type: ignore[arg-type]
        )
        call = _fn(policy)
        for _ in range(2):
            if permitted:
                assert call(True) == "fine"
            else:
                with pytest.raises(ProtectedCallError):
                    call(True)
    finally:
        store.close()
    during = [e for e in events if isinstance(e, CallDuringOutage)]
    assert during == [CallDuringOutage("ns", "svc", mode, permitted)] * 2  # type: ignore[arg-type]


async def test_async_calls_during_a_storage_outage_are_reported() -> None:
    """The coroutine driver reports a degraded admission the same way."""
    pytest.importorskip("psycopg")
    from resilient_circuit.storage import PostgresStorage

    events: list[Any] = []
    store = PostgresStorage("postgresql://app@127.0.0.1:1/db?connect_timeout=2", namespace="ns")
    try:
        policy = CircuitProtectorPolicy(
            resource_key="svc", storage=store, hooks=[events.append], on_storage_error="closed"
        )

        @policy
        async def call() -> str:
            return "fine"

        with pytest.raises(ProtectedCallError):
            await call()
    finally:
        store.close()
    assert [e for e in events if isinstance(e, CallDuringOutage)] == [
        CallDuringOutage("ns", "svc", "closed", False)
    ]


def test_hook_arguments_are_checked() -> None:
    """Non-callable and async hooks raise TypeError naming the parameter; removing a
    stranger, ValueError."""
    with pytest.raises(TypeError, match="`hooks`"):
        CircuitProtectorPolicy(hooks=[42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="`hooks`"):
        RetryWithBackoffPolicy(hooks=print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`hook`"):
        add_hook(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`hook`"):
        remove_hook(print)

    async def coroutine_hook(event: Any) -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        add_hook(coroutine_hook)
    with pytest.raises(TypeError, match="`hooks`"):
        CircuitProtectorPolicy(hooks=[coroutine_hook])


def test_events_are_frozen_and_slotted() -> None:
    """Events are immutable value objects without a __dict__."""
    event = CallSucceeded("ns", "k", 0.5, CLOSED)
    with pytest.raises(AttributeError):
        event.key = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert event == CallSucceeded("ns", "k", 0.5, CLOSED)


def test_the_package_root_exports_the_hooks_api() -> None:
    """Everything in instrumentation.__all__ but type helpers is importable from the root."""
    for name in instrumentation.__all__:
        if name != "TransitionSource":
            assert name in resilient_circuit.__all__
            assert getattr(resilient_circuit, name) is getattr(instrumentation, name)


def test_importing_the_package_imports_no_metrics_library() -> None:
    """prometheus_client and opentelemetry are imported only by their adapters."""
    code = (
        "import sys, resilient_circuit, resilient_circuit.instrumentation;"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus', 'opentelemetry'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def test_ignored_exceptions_are_reported_as_ignored() -> None:
    """An exception in ``ignore`` is reported as CallIgnored, never as a failure."""
    events: list[Any] = []
    policy = _policy(Clock(), hooks=[events.append], ignore=(KeyError,))

    @policy
    def lookup() -> None:
        raise KeyError("absent")

    with pytest.raises(KeyError):
        lookup()
    [ignored] = events
    assert isinstance(ignored, CallIgnored)
    assert isinstance(ignored.exception, KeyError)
    assert (ignored.namespace, ignored.key) == ("ns", "svc")


def test_slow_calls_are_reported_with_their_outcome() -> None:
    """A call slower than slow_call_duration reports its success and CallSlow."""
    events: list[Any] = []
    policy = _policy(
        Clock(),
        hooks=[events.append],
        slow_call_duration=timedelta(milliseconds=1),
        slow_call_limit=Fraction(1, 1),
    )

    @policy
    def sluggish() -> str:
        time.sleep(0.01)
        return "late"

    assert sluggish() == "late"
    kinds = [type(e) for e in events]
    assert kinds[:2] == [CallSucceeded, CallSlow]
    assert events[1].duration >= 0.01
    assert events[1].threshold == pytest.approx(0.001)


def test_the_with_form_and_call_report_through_global_hooks() -> None:
    """``with policy:`` and ``policy.call`` report their outcomes like the decorator."""
    events: list[Any] = []
    add_hook(events.append)
    policy = _policy(Clock(), failure_limit=Fraction(1, 1), cooldown=timedelta(0))
    with policy:
        pass
    assert policy.call(lambda: 7) == 7
    with pytest.raises(Boom), policy:
        raise Boom("in a block")
    kinds = [type(e) for e in events]
    assert kinds[:3] == [CallSucceeded, CallSucceeded, CallFailed]
    assert isinstance(events[2].exception, Boom)
