"""Cached admission, batched recording and transition watching on a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.cli import main as cli
from resilient_circuit.storage import PostgresStorage

from ._helpers import count_round_trips, wait_for


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[list[PostgresStorage]]:
    """Two stores with their own pools and listeners, like two processes."""
    made = [PostgresStorage(pg_dsn, namespace="modes") for _ in range(2)]
    yield made
    for store in made:
        store.close()


def counters(dsn: str, key: str, namespace: str = "modes") -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (key, namespace),
        ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def listening_sessions(dsn: str) -> int:
    """Other sessions of this database whose last statement, an rc_listen, has completed.

    A session's LISTEN (run inside rc_listen) takes effect when that statement commits,
    and it then waits idle for notifications: from then on it hears every transition.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state = 'idle' AND query ILIKE '%%rc\\_listen%%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_cached_admission_makes_one_round_trip_per_call(
    stores: list[PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once listening, a CLOSED call only records: one round trip instead of two."""
    policy = CircuitProtectorPolicy(resource_key="cached", storage=stores[0], admission="cached")
    assert stores[0].wait_listening()

    @policy
    def call() -> str:
        return "ok"

    call()
    sent = count_round_trips(monkeypatch, stores[0])
    for _ in range(20):
        assert call() == "ok"
    assert len(sent) == 20


def test_cached_admission_learns_of_a_peer_trip_by_notify(
    stores: list[PostgresStorage], pg_dsn: str
) -> None:
    """A peer's trip reaches a cached policy by NOTIFY: it asks again and is rejected unrun."""
    cached = CircuitProtectorPolicy(
        resource_key="shared",
        storage=stores[0],
        admission="cached",
        cooldown=timedelta(minutes=5),
    )
    assert stores[0].wait_listening()
    ran: list[int] = []

    @cached
    def call() -> None:
        ran.append(1)

    call()
    peer = CircuitProtectorPolicy(
        resource_key="shared", storage=stores[1], cooldown=timedelta(minutes=5)
    )
    peer.status = CircuitState.OPEN
    breaker = cached._breaker
    # The notification only drops the cached verdict; the state comes from the next reply.
    assert wait_for(lambda: not breaker._trusted)  # type: ignore[attr-defined]
    with pytest.raises(ProtectedCallError):
        call()
    assert ran == [1]
    assert breaker.last_known is not None
    assert breaker.last_known.state is CircuitState.OPEN


def test_cached_admission_asks_the_server_while_not_listening(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a live LISTEN connection, cached admission falls back to asking every time."""
    store = PostgresStorage(pg_dsn, namespace="modes")
    try:
        policy = CircuitProtectorPolicy(resource_key="k", storage=store, admission="cached")
        assert store.wait_listening()
        store._listener.stop()  # type: ignore[union-attr]
        assert not store.listening()

        @policy
        def call() -> None:
            pass

        sent = count_round_trips(monkeypatch, store)
        call()
        call()
        assert len(sent) == 4
    finally:
        store.close()


def test_batched_recording_flushes_everything_in_few_transactions(
    stores: list[PostgresStorage], pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of outcomes arrive intact, in far fewer transactions than calls."""
    policy = CircuitProtectorPolicy(
        resource_key="hot",
        storage=stores[0],
        admission="cached",
        recording="batched",
        failure_limit=Fraction(1, 1),
        window_size=10_000,
    )
    assert stores[0].wait_listening()

    @policy
    def call(ok: bool) -> None:
        if not ok:
            raise ConnectionError("x")

    call(True)
    sent = count_round_trips(monkeypatch, stores[0])
    for i in range(3000):
        try:
            call(i % 10 != 0)
        except ConnectionError:
            pass
    stores[0].flush()
    assert counters(pg_dsn, "hot") == (1 + 2700, 300)
    assert len(sent) <= 3000 * 0.01 + 2
    assert list(policy.execution_log).count(False) == 300


@pytest.mark.parametrize("max_queued", [1000, 100_000])
def test_one_thread_calling_as_fast_as_it_can_sheds_nothing_on_a_healthy_database(
    pg_dsn: str, max_queued: int
) -> None:
    """The queue is drained (or the caller flushes) faster than one thread fills it."""
    store = PostgresStorage(pg_dsn, namespace="modes", max_queued=max_queued)
    key = f"flat-out-{max_queued}"
    try:
        policy = CircuitProtectorPolicy(
            resource_key=key, storage=store, admission="cached", recording="batched"
        )

        @policy
        def call() -> None:
            pass

        call()
        assert store.wait_listening()
        made = 1
        until = time.monotonic() + 2
        while time.monotonic() < until:
            for _ in range(1000):
                call()
            made += 1000
        store.flush()
        assert store.breakers()[0].dropped == 0
        assert counters(pg_dsn, key) == (made, 0)
    finally:
        store.close()


async def test_coroutines_past_max_queued_flush_rather_than_shed_on_a_healthy_database(
    pg_dsn: str,
) -> None:
    """A coroutine that finds more than ``max_queued`` outcomes waiting awaits a flush
    (back-pressure), as a thread does: a database that answers never sees one shed. The
    flusher thread is kept out of it (an hour between flushes)."""
    store = PostgresStorage(pg_dsn, namespace="modes", max_queued=100, flush_interval=3600)
    try:
        policy = CircuitProtectorPolicy(
            resource_key="async-flat-out", storage=store, admission="cached", recording="batched"
        )

        @policy
        async def call() -> None:
            pass

        for _ in range(1000):
            await call()
        assert store.breakers()[0].dropped == 0
        assert store.breakers()[0].queued <= 100
        await store.breakers()[0].aflush()
        assert counters(pg_dsn, "async-flat-out") == (1000, 0)
    finally:
        await store.aclose()
        store.close()


def test_timed_calls_past_max_queued_flush_rather_than_shed_on_a_healthy_database(
    pg_dsn: str,
) -> None:
    """Outcomes that keep their duration (slow calls counted) take the general queued path:
    past ``max_queued`` it flushes too."""
    store = PostgresStorage(pg_dsn, namespace="modes", max_queued=100, flush_interval=3600)
    try:
        policy = CircuitProtectorPolicy(
            resource_key="timed-flat-out",
            storage=store,
            admission="cached",
            recording="batched",
            slow_call_duration=timedelta(hours=1),
        )

        @policy
        def call() -> None:
            pass

        for _ in range(1000):
            call()
        assert store.breakers()[0].dropped == 0
        store.flush()
        assert counters(pg_dsn, "timed-flat-out") == (1000, 0)
    finally:
        store.close()


def test_cached_admission_stops_trusting_its_verdict_when_listen_drops(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls admitted from the cached verdict ask the server again once LISTEN is down."""
    store = PostgresStorage(pg_dsn, namespace="modes", flush_interval=3600)
    try:
        policy = CircuitProtectorPolicy(
            resource_key="dropped-listen", storage=store, admission="cached", recording="batched"
        )

        @policy
        def call() -> None:
            pass

        call()
        assert store.wait_listening()
        call()  # the verdict heard before LISTEN came up is not trusted: one question
        sent = count_round_trips(monkeypatch, store)
        for _ in range(100):
            call()
        assert sent == []
        store._listener.stop()  # type: ignore[union-attr]
        call()
        assert len(sent) == 1
    finally:
        store.close()


@pytest.fixture
def unflushed_store(pg_dsn: str) -> Iterator[PostgresStorage]:
    """A store whose outcomes are sent only by the test's own flushes.

    Its flusher thread would otherwise wake while the test's calls are still being made
    (a loaded machine makes them slowly) and send them in pieces.
    """
    store = PostgresStorage(pg_dsn, namespace="modes", flush_interval=3600)
    yield store
    store.close()


def test_a_healthy_batch_travels_as_one_run(
    unflushed_store: PostgresStorage, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Successes of one generation go as a single run; a failure splits the runs in order."""
    store = unflushed_store
    policy = CircuitProtectorPolicy(
        resource_key="runs",
        storage=store,
        admission="cached",
        recording="batched",
        failure_limit=Fraction(1, 2),
        window_size=10,
    )
    assert store.wait_listening()

    @policy
    def call(ok: bool) -> None:
        if not ok:
            raise ConnectionError("x")

    call(True)
    store.flush()
    generation = policy._breaker.last_known.generation  # type: ignore[attr-defined]
    sent = count_round_trips(monkeypatch, store)
    for _ in range(5000):
        call(True)
    store.flush()
    assert [(p["counts"], p["successes"]) for p in sent] == [("{5000}", "{t}")]
    assert sent[0]["generations"] == f"{{{generation}}}"
    sent.clear()
    for ok in (True, True, False, True):
        try:
            call(ok)
        except ConnectionError:
            pass
    store.flush()
    assert [(p["counts"], p["successes"]) for p in sent] == [("{2,1,1}", "{t,f,t}")]
    assert counters(pg_dsn, "runs") == (1 + 5000 + 3, 1)
    assert list(policy.execution_log) == [True] * 7 + [True, False, True]


def test_batched_outcomes_with_durations_are_recorded_one_by_one(
    stores: list[PostgresStorage], pg_dsn: str
) -> None:
    """With slow calls counted, each queued outcome keeps its duration (rc_record_many)."""
    policy = CircuitProtectorPolicy(
        resource_key="timed",
        storage=stores[0],
        recording="batched",
        failure_limit=Fraction(1, 1),
        window_size=10,
        slow_call_duration=timedelta(milliseconds=20),
        slow_call_limit=Fraction(1, 1),
    )

    @policy
    def call(pause: float) -> None:
        time.sleep(pause)

    call(0)
    for pause in (0, 0.03, 0):
        call(pause)
    stores[0].flush()
    assert counters(pg_dsn, "timed") == (4, 0)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT state, slow_log FROM rc_circuit_breakers WHERE resource_key = 'timed'"
        ).fetchone()
    assert row == ("CLOSED", [False, False, True, False])


@pytest.mark.parametrize("recording", ["immediate", "batched"])
def test_an_outcome_of_generation_minus_one_is_recorded_like_any_stale_one(
    stores: list[PostgresStorage], pg_dsn: str, recording: str
) -> None:
    """No generation a caller passes is mistaken for the call path's 'nothing to queue'."""
    policy = CircuitProtectorPolicy(
        resource_key=f"stale-{recording}",
        storage=stores[0],
        recording=recording,  # type: ignore[arg-type]
        failure_limit=Fraction(1, 1),
        cooldown=timedelta(minutes=1),
    )

    @policy
    def fail() -> None:
        raise ConnectionError("x")

    with pytest.raises(ConnectionError):
        fail()
    stores[0].flush()
    reply = policy._breaker.record(False, -1)  # type: ignore[union-attr]
    assert (reply.state, reply.generation) == (CircuitState.OPEN, 1)
    assert policy._breaker.queued == 0  # type: ignore[union-attr]
    assert counters(pg_dsn, f"stale-{recording}") == (0, 2)


def test_batched_trip_is_seen_after_the_flush(stores: list[PostgresStorage]) -> None:
    """Queued failures trip the breaker when flushed; the next call is then rejected."""
    policy = CircuitProtectorPolicy(
        resource_key="trip",
        storage=stores[0],
        recording="batched",
        failure_limit=Fraction(1, 2),
        window_size=4,
        cooldown=timedelta(minutes=1),
    )

    @policy
    def fail() -> None:
        raise ConnectionError("x")

    for _ in range(4):
        with pytest.raises(ConnectionError):
            fail()
    stores[0].flush()
    with pytest.raises(ProtectedCallError):
        fail()


def test_batched_half_open_trials_are_recorded_at_once(
    stores: list[PostgresStorage], pg_dsn: str
) -> None:
    """A trial call's outcome is never queued: it closes the breaker immediately."""
    policy = CircuitProtectorPolicy(
        resource_key="trial", storage=stores[0], recording="batched", cooldown=timedelta(0)
    )
    policy.status = CircuitState.OPEN

    @policy
    def call() -> str:
        return "ok"

    assert call() == "ok"
    assert policy._breaker.queued == 0
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT state FROM rc_circuit_breakers WHERE resource_key = 'trial'"
        ).fetchone()
    assert row == ("CLOSED",)


def test_batched_outcomes_are_flushed_when_the_process_exits(pg_dsn: str) -> None:
    """A process that ends normally flushes its queue on the way out: nothing is lost."""
    worker = Path(__file__).parent / "workers" / "batched_exit.py"
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, str(worker), pg_dsn, "2500"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert counters(pg_dsn, "hot", "exit") == (2500, 0)


def test_watch_yields_transitions_as_they_commit(
    stores: list[PostgresStorage], pg_dsn: str
) -> None:
    """watch() sees every transition another client makes, in order."""
    listening = listening_sessions(pg_dsn)
    seen: list[Any] = []
    ready = threading.Event()

    def follow() -> None:
        events = stores[0].watch(timeout=3.0)
        ready.set()
        for event in events:
            seen.append(event)
            if len(seen) == 2:
                return

    watcher = threading.Thread(target=follow)
    watcher.start()
    assert ready.wait(5)
    # The generator connects and LISTENs on its first step, in the watcher's thread.
    assert wait_for(lambda: listening_sessions(pg_dsn) > listening, timeout=10)
    policy = CircuitProtectorPolicy(
        resource_key="watched", storage=stores[1], cooldown=timedelta(minutes=1)
    )
    policy.status = CircuitState.OPEN
    policy.status = CircuitState.CLOSED
    watcher.join(10)
    assert [(e.resource_key, e.old, e.new) for e in seen] == [
        ("watched", CircuitState.CLOSED, CircuitState.OPEN),
        ("watched", CircuitState.OPEN, CircuitState.CLOSED),
    ]
    assert seen[0].open_until is not None
    assert seen[1].generation == seen[0].generation + 1


def test_cli_watch_prints_transitions(stores: list[PostgresStorage], pg_dsn: str) -> None:
    """resilient-circuit-cli watch prints one line per transition across the fleet."""

    listening = listening_sessions(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_configure('cli-watched', 'modes')")

    def trip_once_watched() -> None:
        # Transitions before the command's LISTEN are not for it to print.
        if not wait_for(lambda: listening_sessions(pg_dsn) > listening, timeout=10):
            return  # the command then times out and the assertion below says so
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT * FROM rc_force('cli-watched', 'OPEN', 'modes')")

    tripper = threading.Thread(target=trip_once_watched)
    tripper.start()
    result = CliRunner().invoke(cli, ["watch", "--dsn", pg_dsn, "--count", "1", "--timeout", "10"])
    tripper.join(10)
    assert result.exit_code == 0, result.output
    assert "modes/cli-watched: CLOSED -> OPEN (generation 1)" in result.output


def test_modes_are_validated(stores: list[PostgresStorage]) -> None:
    """Unknown admission or recording modes are refused, naming the parameter."""
    with pytest.raises(ValueError, match="admission"):
        CircuitProtectorPolicy(resource_key="v", storage=stores[0], admission="lazy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recording"):
        CircuitProtectorPolicy(resource_key="v", storage=stores[0], recording="later")  # type: ignore[arg-type]
