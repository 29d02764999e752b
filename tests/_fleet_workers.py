"""What each process of a test fleet runs (spawned, so it must be importable).

Every worker builds its own PostgresStorage (its own pool) and policy, exactly as a
separate application process would, reports what it saw on a queue and closes what
it opened.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError
from resilient_circuit.storage import PostgresStorage


class Failed(Exception):
    """The protected function's own failure."""


def _policy(
    dsn: str, namespace: str, key: str, config: dict[str, Any]
) -> tuple[PostgresStorage, CircuitProtectorPolicy, list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    store = PostgresStorage(dsn, namespace=namespace)
    policy = CircuitProtectorPolicy(
        resource_key=key,
        storage=store,
        on_status_change=lambda p, old, new: events.append((old.name, new.name)),
        **config,
    )
    return store, policy, events


def _admitted_generation(policy: CircuitProtectorPolicy) -> int:
    # Inside the protected function the breaker's last reply is this call's admission.
    last = policy._breaker.last_known
    assert last is not None
    return last.generation


def _seconds(error: ProtectedCallError) -> float | None:
    return None if error.retry_after is None else error.retry_after.total_seconds()


def run_stream(
    dsn: str,
    namespace: str,
    key: str,
    config: dict[str, Any],
    outcomes: list[bool],
    start: Any,
    out: Any,
) -> None:
    """Call once per outcome (True = success) as soon as the whole fleet is ready.

    Reports, per call, ("ran", admitted generation, outcome) or ("rejected",
    retry_after seconds, state), plus the transitions ``on_status_change`` saw.
    """
    store, policy, events = _policy(dsn, namespace, key, config)
    seen: list[tuple[Any, ...]] = []

    @policy
    def call(ok: bool) -> None:
        seen.append(("ran", _admitted_generation(policy), ok))
        if not ok:
            raise Failed

    try:
        start.wait(60)
        for ok in outcomes:
            try:
                call(ok)
            except Failed:
                pass
            except ProtectedCallError as rejected:
                seen.append(("rejected", _seconds(rejected), rejected.state.name))
    finally:
        store.close()
    out.put({"pid": os.getpid(), "calls": seen, "events": events})


def observe_peer_trip(
    dsn: str,
    namespace: str,
    key: str,
    config: dict[str, Any],
    mode: str,
    ready: Any,
    tripped: Any,
    out: Any,
) -> None:
    """Make one call before a peer trips the breaker and five after it (sync or async)."""
    store, policy, events = _policy(dsn, namespace, key, config)
    ran: list[int] = []
    outcomes: list[Any] = []

    @policy
    def sync_call(n: int) -> int:
        ran.append(n)
        return n

    @policy
    async def async_call(n: int) -> int:
        await asyncio.sleep(0)
        ran.append(n)
        return n

    def rejected(error: ProtectedCallError) -> tuple[Any, ...]:
        return ("rejected", _seconds(error), error.state.name)

    async def in_a_loop() -> None:
        # One event loop for every call: the async pool belongs to it.
        try:
            assert await async_call(0) == 0
            ready.set()
            await asyncio.to_thread(tripped.wait, 60)
            for n in range(1, 6):
                try:
                    outcomes.append(await async_call(n))
                except ProtectedCallError as error:
                    outcomes.append(rejected(error))
        finally:
            await store.aclose()

    try:
        if mode == "async":
            asyncio.run(in_a_loop())
        else:
            assert sync_call(0) == 0
            ready.set()
            tripped.wait(60)
            for n in range(1, 6):
                try:
                    outcomes.append(sync_call(n))
                except ProtectedCallError as error:
                    outcomes.append(rejected(error))
    finally:
        store.close()
    out.put({"pid": os.getpid(), "ran": ran, "outcomes": outcomes, "events": events})


def half_open_trial(
    dsn: str,
    namespace: str,
    key: str,
    config: dict[str, Any],
    start: Any,
    release: Any,
    executions: Any,
    out: Any,
) -> None:
    """Try one call when the fleet starts; a trial that runs holds its permit until released."""
    store, policy, _ = _policy(dsn, namespace, key, config)

    @policy
    def trial() -> str:
        with executions.get_lock():
            executions.value += 1
        out.put(("running", os.getpid(), _admitted_generation(policy)))
        release.wait(60)
        return "ok"

    try:
        start.wait(60)
        try:
            trial()
        except ProtectedCallError as rejected:
            out.put(("rejected", os.getpid(), _seconds(rejected), rejected.state.name))
        else:
            out.put(("done", os.getpid()))
    finally:
        store.close()


def crash_during_trial(
    dsn: str, namespace: str, key: str, config: dict[str, Any], running: Any
) -> None:
    """Take a trial permit and hang inside the call until the test kills this process."""
    store, policy, _ = _policy(dsn, namespace, key, config)

    @policy
    def trial() -> None:
        running.set()
        time.sleep(120)

    try:
        trial()
    finally:  # pragma: no cover - the process is killed inside trial()
        store.close()


def late_trial(
    dsn: str,
    namespace: str,
    key: str,
    config: dict[str, Any],
    admitted: Any,
    finish: Any,
    out: Any,
) -> None:
    """Take a trial permit, wait to be told to finish, then succeed (late)."""
    store, policy, _ = _policy(dsn, namespace, key, config)
    generations: list[int] = []

    @policy
    def trial() -> str:
        generations.append(_admitted_generation(policy))
        admitted.set()
        finish.wait(60)
        return "ok"

    try:
        result = trial()
        last = policy._breaker.last_known
        assert last is not None
        out.put(
            {
                "result": result,
                "admitted": generations,
                "reply": (last.state.name, last.generation),
            }
        )
    finally:
        store.close()
