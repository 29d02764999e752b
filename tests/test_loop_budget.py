"""The event loops' connection budget: a share comes back however the connection goes."""

from __future__ import annotations

import asyncio
import gc
import threading

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
