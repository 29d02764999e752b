"""A closed store is final: calls racing or following close() are not an outage, open
nothing and start nothing, and every outcome they cannot record is counted and told."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Literal

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError
from resilient_circuit.storage import PostgresStorage, StorageClosed
from tests._fleet_net import faulty_proxy
from tests._helpers import wait_for

pytestmark = pytest.mark.postgres

# A bound on waits for a condition, not a measure of how fast it comes.
WAIT = 30.0
MODES = [
    ("strict", "immediate"),
    ("strict", "batched"),
    ("cached", "immediate"),
    ("cached", "batched"),
]
CLOSED_LINE = "was closed by close()"


def _sessions(dsn: str) -> int:
    """The store's sessions on this test's database (its pools' and its LISTEN one)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'resilient_circuit'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _no_sessions(dsn: str) -> bool:
    """Whether the store's sessions all ended (the server sees a closed one end shortly)."""
    return wait_for(lambda: _sessions(dsn) == 0, WAIT)


async def _ano_sessions(dsn: str) -> bool:
    """``_no_sessions`` from a coroutine: its loop runs meanwhile (a connection given back
    to a closed pool is closed by a task of that loop)."""
    return await asyncio.to_thread(_no_sessions, dsn)


def _counters(dsn: str, key: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT successes, failures FROM rc_circuit_breakers WHERE resource_key = %s",
            (key,),
        ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def _store_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` and alive, but an event loop's worker threads."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("asyncio")
    ]


@pytest.fixture
def messages(caplog: pytest.LogCaptureFixture) -> Callable[[], list[tuple[str, str]]]:
    """The level and text of each record of the store's logger so far."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")

    def read() -> list[tuple[str, str]]:
        return [
            (r.levelname, r.getMessage())
            for r in caplog.records
            if r.name.startswith("resilient_circuit")
        ]

    return read


def _outages(messages: Callable[[], list[tuple[str, str]]]) -> list[str]:
    return [text for _, text in messages() if "unavailable" in text]


def _closed_lines(messages: Callable[[], list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return [(level, text) for level, text in messages() if CLOSED_LINE in text]


@pytest.fixture
def threads_before() -> set[threading.Thread]:
    """The threads alive before the test made its store."""
    return set(threading.enumerate())


def _policy(
    store: PostgresStorage,
    key: str,
    admission: Literal["strict", "cached"] = "strict",
    recording: Literal["immediate", "batched"] = "immediate",
    on_storage_error: Literal["open", "closed", "local"] = "open",
) -> CircuitProtectorPolicy:
    return CircuitProtectorPolicy(
        resource_key=key,
        storage=store,
        admission=admission,
        recording=recording,
        on_storage_error=on_storage_error,
    )


def test_a_call_whose_admission_races_close_is_not_an_outage(
    pg_dsn: str, messages: Callable[[], list[tuple[str, str]]]
) -> None:
    """An admission waiting for a connection when close() closes the pool is handled per
    on_storage_error, with the closed line once and no outage WARNING."""
    store = PostgresStorage(pg_dsn, max_connections=1, connect_timeout=WAIT)
    policy = _policy(store, "racing-admission")
    results: list[Any] = []
    with store.pool().connection() as held:  # the pool's only connection
        assert held.execute("SELECT 1").fetchone() == (1,)
        caller = threading.Thread(target=lambda: results.append(policy(lambda: "ran")()))
        caller.start()
        assert wait_for(lambda: store.pool().get_stats().get("requests_waiting", 0) >= 1, WAIT)
        store.close()
        caller.join()
    assert results == ["ran"]
    assert _outages(messages) == []
    assert len(_closed_lines(messages)) == 1, messages()
    assert _no_sessions(pg_dsn)


async def test_a_coroutine_whose_admission_races_close_is_not_an_outage(
    pg_dsn: str, messages: Callable[[], list[tuple[str, str]]]
) -> None:
    """The coroutine twin: a task waiting in its loop's pool when close() closes it."""
    store = PostgresStorage(pg_dsn, max_connections=1, connect_timeout=WAIT)
    policy = _policy(store, "racing-aadmission")

    @policy
    async def call() -> str:
        return "ran"

    pool = await store.apool()
    async with pool.connection() as held:
        await held.execute("SELECT 1")
        task = asyncio.ensure_future(call())

        def waiting() -> bool:
            return int(pool.get_stats().get("requests_waiting", 0)) >= 1

        assert await asyncio.to_thread(wait_for, waiting, WAIT)
        await asyncio.to_thread(store.close)
    assert await task == "ran"
    assert _outages(messages) == []
    assert len(_closed_lines(messages)) == 1, messages()
    assert await _ano_sessions(pg_dsn)


@pytest.mark.parametrize(("admission", "recording"), MODES)
def test_an_outcome_recorded_after_close_is_counted_as_dropped_and_told_once(
    pg_dsn: str,
    messages: Callable[[], list[tuple[str, str]]],
    admission: Literal["strict", "cached"],
    recording: Literal["immediate", "batched"],
) -> None:
    """Calls running when close() is called return their own result and exception; their
    outcomes are counted in dropped_outcomes and told by one line, never as an outage."""
    store = PostgresStorage(pg_dsn, flush_interval=3600)
    policy = _policy(store, "in-flight", admission, recording)
    started = threading.Barrier(3)
    go = threading.Event()
    results: list[Any] = []

    @policy
    def call(fail: bool) -> str:
        started.wait()
        go.wait()
        if fail:
            raise KeyError("own")
        return "own result"

    def run(fail: bool) -> None:
        try:
            results.append(call(fail))
        except KeyError as exc:
            results.append(exc)

    assert policy(lambda: 1)() == 1  # the row exists, verdicts are cached
    callers = [threading.Thread(target=run, args=(fail,)) for fail in (False, True)]
    for each in callers:
        each.start()
    started.wait()
    store.close()
    go.set()
    for each in callers:
        each.join()
    assert "own result" in results
    assert any(isinstance(r, KeyError) for r in results)
    assert store.dropped_outcomes == 2
    assert _counters(pg_dsn, "in-flight") == (1, 0)
    assert _outages(messages) == []
    assert [level for level, _ in _closed_lines(messages)] == ["WARNING"], messages()


@pytest.mark.parametrize(("admission", "recording"), MODES)
async def test_a_coroutine_running_at_close_keeps_its_result(
    pg_dsn: str,
    messages: Callable[[], list[tuple[str, str]]],
    admission: Literal["strict", "cached"],
    recording: Literal["immediate", "batched"],
) -> None:
    """The coroutine twin: one awaited while the store closes returns its own result; its
    outcome is counted as dropped and told once, never as an outage."""
    store = PostgresStorage(pg_dsn, flush_interval=3600)
    policy = _policy(store, "ain-flight", admission, recording)
    started, go = asyncio.Event(), asyncio.Event()

    @policy
    async def call() -> str:
        started.set()
        await go.wait()
        return "own result"

    task = asyncio.ensure_future(call())
    await started.wait()
    await asyncio.to_thread(store.close)
    go.set()
    assert await task == "own result"
    assert store.dropped_outcomes == 1
    assert _outages(messages) == []
    assert [level for level, _ in _closed_lines(messages)] == ["WARNING"], messages()
    assert await _ano_sessions(pg_dsn)


@pytest.mark.parametrize(("admission", "recording"), MODES)
def test_calls_after_close_open_nothing_and_start_nothing(
    pg_dsn: str,
    messages: Callable[[], list[tuple[str, str]]],
    threads_before: set[threading.Thread],
    admission: Literal["strict", "cached"],
    recording: Literal["immediate", "batched"],
) -> None:
    """After close() returns no thread or session of the store is left, and calls made
    afterwards (per on_storage_error "open": they run) open none again."""
    store = PostgresStorage(pg_dsn)
    policy = _policy(store, f"after-{admission}-{recording}", admission, recording)
    protected = policy(lambda n: n)
    for n in range(20):
        assert protected(n) == n
    if admission == "cached":
        assert store.wait_listening(WAIT)
    assert _store_threads(threads_before)
    store.close()
    assert _store_threads(threads_before) == []
    assert _no_sessions(pg_dsn)
    for n in range(20):
        assert protected(n) == n
    assert policy.status is not None  # a read after close answers from what was seen
    assert _store_threads(threads_before) == []
    assert _no_sessions(pg_dsn)
    assert _outages(messages) == []
    assert len(_closed_lines(messages)) == 1, messages()
    with pytest.raises(StorageClosed, match="closed by close"):
        store.check()
    with pytest.raises(psycopg.OperationalError, match="closed"):
        store.pool()


@pytest.mark.parametrize(("admission", "recording"), MODES)
async def test_coroutines_after_close_open_nothing_and_start_nothing(
    pg_dsn: str,
    messages: Callable[[], list[tuple[str, str]]],
    threads_before: set[threading.Thread],
    admission: Literal["strict", "cached"],
    recording: Literal["immediate", "batched"],
) -> None:
    """The coroutine twin: close() in a worker thread ends the loop's pool, the LISTEN and
    flusher threads, and coroutines awaited afterwards open nothing again."""
    store = PostgresStorage(pg_dsn)
    policy = _policy(store, f"aafter-{admission}-{recording}", admission, recording)

    @policy
    async def protected(n: int) -> int:
        return n

    for n in range(20):
        assert await protected(n) == n
    await asyncio.to_thread(store.close)
    assert _store_threads(threads_before) == []
    assert await _ano_sessions(pg_dsn)
    for n in range(20):
        assert await protected(n) == n
    assert _store_threads(threads_before) == []
    assert await _ano_sessions(pg_dsn)
    assert _outages(messages) == []
    assert len(_closed_lines(messages)) == 1, messages()


async def test_close_called_in_the_loop_then_aclose_closes_its_pool(
    pg_dsn: str, threads_before: set[threading.Thread]
) -> None:
    """close() in a coroutine schedules its loop's pool to close; aclose() waits for it."""
    store = PostgresStorage(pg_dsn)
    policy = _policy(store, "in-loop")

    @policy
    async def protected() -> int:
        return 1

    assert await protected() == 1
    store.close()
    await store.aclose()
    assert await _ano_sessions(pg_dsn)
    assert await protected() == 1
    assert await _ano_sessions(pg_dsn)
    assert _store_threads(threads_before) == []


async def test_aclose_releases_the_loops_pool_and_keeps_the_store(pg_dsn: str) -> None:
    """aclose() closes this loop's pool only: the store is not closed and serves calls."""
    store = PostgresStorage(pg_dsn)
    policy = _policy(store, "aclose-kept")

    @policy
    async def protected() -> int:
        return 1

    try:
        assert await protected() == 1
        await store.aclose()
        assert not store.closed
        assert await protected() == 1
        assert _counters(pg_dsn, "aclose-kept") == (2, 0)
    finally:
        await asyncio.to_thread(store.close)


def test_close_closes_pools_of_loops_in_other_threads(
    pg_dsn: str, threads_before: set[threading.Thread]
) -> None:
    """close() waits for the pool of an event loop another thread runs."""
    store = PostgresStorage(pg_dsn)
    policy = _policy(store, "other-loop")

    @policy
    async def protected() -> int:
        return 1

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    try:
        assert asyncio.run_coroutine_threadsafe(protected(), loop).result(WAIT) == 1
        store.close()
        assert _no_sessions(pg_dsn)
        assert asyncio.run_coroutine_threadsafe(protected(), loop).result(WAIT) == 1
        assert _no_sessions(pg_dsn)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()


def test_on_storage_error_closed_rejects_calls_after_close(pg_dsn: str) -> None:
    """With on_storage_error="closed" a call after close() is rejected before it runs."""
    store = PostgresStorage(pg_dsn)
    policy = _policy(store, "fails-closed", on_storage_error="closed")
    ran: list[int] = []
    protected = policy(lambda: ran.append(1))
    protected()
    store.close()
    with pytest.raises(ProtectedCallError):
        protected()
    assert ran == [1]


def test_close_twice_and_aclose_after_close_do_nothing_more(
    pg_dsn: str, messages: Callable[[], list[tuple[str, str]]]
) -> None:
    """close() is idempotent: again, or as aclose(), it raises nothing and logs nothing."""
    store = PostgresStorage(pg_dsn)
    assert _policy(store, "twice")(lambda: 1)() == 1
    store.close()
    store.close()
    asyncio.run(store.aclose())
    assert store.closed
    assert messages() == []
    assert _no_sessions(pg_dsn)


def test_queued_outcomes_are_flushed_at_close(
    pg_dsn: str, messages: Callable[[], list[tuple[str, str]]]
) -> None:
    """Batched outcomes still queued when close() is called are written before it returns."""
    store = PostgresStorage(pg_dsn, flush_interval=3600)
    protected = _policy(store, "queued", recording="batched")(lambda: None)
    for _ in range(50):
        protected()
    assert store.breakers()[0].queued > 0
    store.close()
    assert _counters(pg_dsn, "queued") == (50, 0)
    assert store.dropped_outcomes == 0
    assert messages() == []


def test_close_while_the_listener_reconnects_ends_its_thread(
    pg_dsn: str, threads_before: set[threading.Thread]
) -> None:
    """close() while the LISTEN connection was just cut (the listener reconnecting) leaves
    no listener thread and no session behind."""
    store = PostgresStorage(pg_dsn)
    protected = _policy(store, "relisten", admission="cached")(lambda: 1)
    assert protected() == 1
    assert store.wait_listening(WAIT)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'resilient_circuit'"
            # The LISTEN connection's last statement: its rc_listen, or a heartbeat since.
            " AND (query LIKE '%rc\\_listen%' OR query = 'SELECT 1')"
        )
    assert wait_for(lambda: not store.listening(), WAIT)
    store.close()
    assert _store_threads(threads_before) == []
    assert _no_sessions(pg_dsn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_close_in_a_forked_child_leaves_the_parent_working(pg_dsn: str) -> None:
    """A child's close() closes its own connections only; the parent's store works on."""
    store = PostgresStorage(pg_dsn)
    protected = _policy(store, "forked-close")(lambda n: n)
    try:
        assert protected(1) == 1
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                assert protected(2) == 2
                store.close()
                assert protected(3) == 3
                assert store.closed
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not store.closed
        for n in range(5):
            assert protected(n) == n
        assert _counters(pg_dsn, "forked-close") == (7, 0)
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_store_closed_before_a_fork_stays_closed_in_the_child(pg_dsn: str) -> None:
    """close() is final in a forked child too: the child's calls open no connection."""
    store = PostgresStorage(pg_dsn)
    protected = _policy(store, "closed-fork")(lambda n: n)
    assert protected(1) == 1
    store.close()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            assert protected(2) == 2
            assert _no_sessions(pg_dsn)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_closed_shared_store_is_replaced_for_policies_made_afterwards(pg_dsn: str) -> None:
    """The store shared per DSN and namespace is made anew once the shared one is closed."""
    from resilient_circuit.storage.postgres.store import shared_storage

    first = shared_storage(pg_dsn, "shared-closed")
    assert shared_storage(pg_dsn, "shared-closed") is first
    first.close()
    second = shared_storage(pg_dsn, "shared-closed")
    try:
        assert second is not first
        assert not second.closed
        assert _policy(second, "shared-closed")(lambda: 1)() == 1
    finally:
        second.close()


def test_outcomes_close_could_not_write_are_counted_and_told(
    pg_dsn: str,
    messages: Callable[[], list[tuple[str, str]]],
    threads_before: set[threading.Thread],
) -> None:
    """Queued outcomes the last flush cannot write (the database refuses) are named in a
    WARNING and counted in dropped_outcomes; close() still leaves no thread behind."""
    with faulty_proxy(pg_dsn) as proxy:
        store = PostgresStorage(proxy.dsn(), flush_interval=3600)
        protected = _policy(store, "unwritten", recording="batched")(lambda: None)
        for _ in range(30):
            protected()
        queued = store.breakers()[0].queued
        assert queued > 0
        proxy.set_mode("refuse")
        proxy.drop()
        store.close()
        assert store.dropped_outcomes == queued
        told = [text for _, text in messages() if "could not write" in text]
        assert len(told) == 1, messages()
        assert f"could not write {queued} batched" in told[0]
        left = [t for t in _store_threads(threads_before) if t.name != "faulty-proxy"]
        assert left == []
