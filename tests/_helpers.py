"""What many test modules need: policies that record their transitions, functions that
fail on demand, waiting for a condition, counting round trips and reading counters."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, _settings
from resilient_circuit.storage import CircuitBreakerStorage, PostgresStorage

MS = 1_000_000  # nanoseconds in a millisecond
SEED = Path(__file__).parent / "seed"
RC_SETTINGS = (
    "RC_DB_DSN",
    "RC_DB_HOST",
    "RC_DB_PORT",
    "RC_DB_NAME",
    "RC_DB_USER",
    "RC_DB_PASSWORD",
    "RC_DB_SCHEMA",
    "RC_NAMESPACE",
)

Transitions = list[tuple[CircuitState, CircuitState]]


class Clock:
    """A fake monotonic clock in nanoseconds, for an ``InMemoryStorage(clock=...)``."""

    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms * MS


def make(
    storage: CircuitBreakerStorage, **kwargs: Any
) -> tuple[CircuitProtectorPolicy, Transitions]:
    """A policy on ``storage`` (key "svc" unless given) and the transitions it reports."""
    events: Transitions = []
    kwargs.setdefault("resource_key", "svc")
    policy = CircuitProtectorPolicy(
        storage=storage, on_status_change=lambda p, o, n: events.append((o, n)), **kwargs
    )
    return policy, events


def flaky(
    policy: CircuitProtectorPolicy, error: type[Exception] = ConnectionError
) -> Callable[..., str]:
    """``call(ok=True)`` through ``policy``: returns "ok", or raises ``error`` when not ok."""

    @policy
    def call(ok: bool = True) -> str:
        if not ok:
            raise error("down")
        return "ok"

    return call


def aflaky(
    policy: CircuitProtectorPolicy, error: type[Exception] = TimeoutError
) -> Callable[..., Awaitable[str]]:
    """The coroutine twin of ``flaky``: it yields to the loop once before answering."""

    @policy
    async def call(ok: bool = True) -> str:
        await asyncio.sleep(0)
        if not ok:
            raise error("down")
        return "ok"

    return call


class Gate:
    """A function that blocks inside the policy until released, to hold calls in flight."""

    def __init__(self, policy: CircuitProtectorPolicy) -> None:
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()
        self.outcomes: list[Any] = []
        self._threads: list[threading.Thread] = []

        @policy
        def held(ok: bool) -> str:
            self.inside.release()
            self.release.wait(30)
            if not ok:
                raise ConnectionError("down")
            return "ok"

        self._held = held

    def enter(self, ok: bool = True, timeout: float = 10.0) -> None:
        """Start one call in a thread and return once it runs inside the function."""

        def run() -> None:
            try:
                self.outcomes.append(self._held(ok))
            except Exception as exc:
                self.outcomes.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        self._threads.append(thread)
        assert self.inside.acquire(timeout=timeout), "the call never got inside"

    def finish(self, timeout: float = 10.0) -> list[Any]:
        """Let every held call return and wait for them: their results or exceptions."""
        self.release.set()
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads)
        return self.outcomes


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def count_round_trips(monkeypatch: pytest.MonkeyPatch, store: PostgresStorage) -> list[Any]:
    """Every statement ``store`` sends from now on (its parameters), still sent for real."""
    sent: list[Any] = []
    real_fetch = store.fetch

    def fetch(breaker: Any, statement: Any, params: Any, **kw: Any) -> Any:
        sent.append(params)
        return real_fetch(breaker, statement, params, **kw)

    monkeypatch.setattr(store, "fetch", fetch)
    return sent


def db_row(dsn: str, key: str, namespace: str) -> tuple[Any, ...]:
    """A breaker's row as plain SQL sees it: state, generation, execution_log,
    failure_count, successes, failures."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT state, generation, execution_log, failure_count, successes, failures"
            " FROM rc_circuit_breakers WHERE resource_key = %s AND namespace = %s",
            (key, namespace),
        ).fetchone()
    assert found is not None, f"no row for {key!r} in {namespace!r}"
    return found


def db_counters(dsn: str, key: str, namespace: str) -> tuple[int, int]:
    """A breaker's lifetime (successes, failures) as plain SQL sees them."""
    row = db_row(dsn, key, namespace)
    return row[4], row[5]


def run_seed_snippets(*, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """One namespace in which the description's snippets ran in page order, as a reader's
    would (later snippets use names that earlier ones imported). ``__bound__`` maps each
    snippet's file name to the names it bound, since later snippets rebind some."""
    namespace: dict[str, Any] = {"__name__": "seed_page"}
    bound: dict[str, dict[str, Any]] = {}
    for path in sorted(SEED.glob("*.py")):
        if path.name in skip:
            continue
        before = dict(namespace)
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        bound[path.name] = {
            k: v for k, v in namespace.items() if k not in before or before[k] is not v
        }
    namespace["__bound__"] = bound
    return namespace


def clear_database_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RC_DB_* or RC_NAMESPACE for the rest of the test, and ``.env`` read again."""
    for name in RC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_settings, "_dotenv_loaded", False)


@contextmanager
def dotenv_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside, only a ``.env`` the test writes configures the database; what it loaded
    into the environment is gone afterwards (monkeypatch then restores the rest)."""
    clear_database_settings(monkeypatch)
    try:
        yield
    finally:
        for name in RC_SETTINGS:
            os.environ.pop(name, None)


def forget_shared_storages() -> None:
    """Close the PostgreSQL stores ``create_storage`` shared, so the next one is new."""
    from resilient_circuit.storage import postgres

    for store in postgres._shared.values():
        store.close()
    postgres._shared.clear()


def channel(owner_dsn: str, namespace: str | None = None) -> str:
    """The channel of ``namespace``'s transitions (None: of every namespace's), as the owner.

    A forger handed it is any role that learnt the name: it can notify, not read the rows.
    """
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        if namespace is None:
            row = conn.execute("SELECT channel FROM rc_channels()").fetchone()
        else:
            row = conn.execute("SELECT rc_channel(%s)", (namespace,)).fetchone()
    assert row is not None
    return str(row[0])
