"""The event loops' connection budget: a share comes back however the connection goes."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres.loop_pool import Budget, budgeted_connection_class


def test_a_share_given_back_by_the_collector_within_the_budget_lock_does_not_deadlock(
    pg_dsn: str,
) -> None:
    """A connection dropped without close() gives its share back when collected; the
    cyclic collector runs whenever an allocation starts it, also while this very thread
    holds the budget's lock (taking a share, raising that none is left): it must not wait
    there for a lock its own thread holds."""
    budget = Budget(2)
    connection_class = budgeted_connection_class(budget)

    async def drop_one() -> None:
        conn = await connection_class.connect(pg_dsn)
        conn.pgconn.finish()  # broken, as the pool drops them
        conn.itself = conn  # type: ignore[attr-defined]  # a cycle: only the collector frees it

    gc.disable()  # until the collection below, standing for one an allocation starts
    try:
        asyncio.run(drop_one())
        assert budget._used == 1

        def collect_within_the_lock() -> None:
            with budget._lock:
                gc.collect()

        worker = threading.Thread(target=collect_within_the_lock, daemon=True)
        worker.start()
        worker.join(30)
    finally:
        gc.enable()
    assert not worker.is_alive(), "deadlocked on the budget's own lock"
    assert budget._used == 0


def test_more_event_loops_than_connections_is_no_outage(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three busy event loops, two connections: the loop left without one may wait until
    its callers time out, but that is not the database being down (an outage would send
    every breaker of the store, in every loop, past the database for a while): those calls
    alone are handled per on_storage_error, with one WARNING that names max_connections."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    store = PostgresStorage(pg_dsn, max_connections=2, connect_timeout=0.5)
    protector = CircuitProtectorPolicy(resource_key="turns", storage=store)

    @protector
    async def call() -> None:
        await asyncio.sleep(0.001)

    loops = 3
    calls = [0] * loops
    everyone_called = threading.Event()
    errors: list[BaseException] = []

    def loop_calling(number: int) -> None:
        async def task() -> None:
            while not everyone_called.is_set():
                await call()
                calls[number] += 1
                if min(calls) >= 10:
                    everyone_called.set()

        async def main() -> None:
            await asyncio.gather(task(), task())

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)
            everyone_called.set()

    workers = [threading.Thread(target=loop_calling, args=(n,)) for n in range(loops)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
    finally:
        everyone_called.set()
        store.close()
    assert errors == []
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("resilient")]
    assert not [m for m in messages if "unavailable" in m], messages
    assert all("max_connections" in m for m in messages), messages
    assert len(messages) <= 1, messages
