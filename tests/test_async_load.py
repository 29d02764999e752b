"""Hundreds of coroutines through one async policy and a pool far smaller than their number."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from fractions import Fraction
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import PostgresStorage

from ._fleet_traffic import LOOP_STALL, blocking_pool_uses, loop_lag

KEY = "hot"
NAMESPACE = "load"
TASKS = 500
CONNECTIONS = 5
#: How long a round trip may wait for one of the CONNECTIONS (the pool's timeout, the
#: store's connect_timeout). The TASKS calls queue 2 x TASKS round trips on them, and on
#: a loaded machine the last in line waits seconds: the default (2 s) would turn that
#: queue into PoolTimeouts, which fail calls open and lose their records. A wait this
#: long is never reached by a queue that moves; a deadlock still ends the test, bounded
#: by it (see ``run_all``).
POOL_WAIT = 60.0


class Failed(Exception):
    """The protected coroutine's own failure."""


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStorage]:
    """A store whose pools hold at most CONNECTIONS connections, waited for POOL_WAIT."""
    made = PostgresStorage(
        pg_dsn, namespace=NAMESPACE, max_connections=CONNECTIONS, connect_timeout=POOL_WAIT
    )
    yield made
    await made.aclose()
    made.close()


def counters(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT state, generation, successes, failures FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (KEY, NAMESPACE),
        )
        found = cur.fetchone()
        assert found is not None
        return dict(zip([c.name for c in cur.description or ()], found, strict=True))


async def run_all(
    store: PostgresStorage, call: Callable[[int], Awaitable[Any]]
) -> tuple[list[Any], int]:
    """Start TASKS calls together; return their results and how many were in flight at once.

    Calls start 50 per loop iteration (all of them within a few milliseconds, long
    before the pool has served the first few), so that the ticker measures the
    policy, not one 500-step burst of the test's own making. A deadlock would show
    as the gather timing out: each call makes two round trips, each waiting at most
    the pool's timeout for a connection and the statement timeout for its answer
    (or failing open), so a gather that outlasts that, and a margin for the calls'
    own sleeps and a loaded machine, is stuck rather than slow.
    """
    stuck_after = 2 * (store.connect_timeout + store.statement_timeout) + 30
    in_flight = peak = 0

    async def tracked(n: int) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await call(n)
        finally:
            in_flight -= 1

    tasks: list[asyncio.Task[Any]] = []
    for first in range(0, TASKS, 50):
        tasks.extend(asyncio.create_task(tracked(n)) for n in range(first, first + 50))
        await asyncio.sleep(0)
    gathered = asyncio.gather(*tasks, return_exceptions=True)
    results = await asyncio.wait_for(gathered, timeout=stuck_after)
    return results, peak


async def test_five_hundred_tasks_through_five_connections_lose_nothing(
    store: PostgresStorage, pg_dsn: str
) -> None:
    """500 concurrent calls, 5 connections: all run, all recorded, none blocks the loop."""
    # 100 failures can never be half of a 1000-outcome window: nothing is rejected.
    policy = CircuitProtectorPolicy(
        resource_key=KEY, storage=store, failure_limit=Fraction(1, 2), window_size=1000
    )
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.01) for _ in range(TASKS)]
    ran: list[int] = []

    @policy
    async def call(n: int) -> int:
        await asyncio.sleep(delays[n])
        ran.append(n)
        if n % 5 == 0:
            raise Failed(n)
        return n

    blocking = blocking_pool_uses(store)
    async with loop_lag() as worst:
        results, peak = await run_all(store, call)
    assert blocking == []
    assert peak >= TASKS - 100
    assert sorted(ran) == list(range(TASKS))
    for n, result in enumerate(results):
        if n % 5 == 0:
            assert isinstance(result, Failed)
            assert result.args == (n,)
        else:
            assert result == n
    row = counters(pg_dsn)
    assert (row["successes"], row["failures"]) == (400, 100)
    assert (row["state"], row["generation"]) == ("CLOSED", 0)
    assert store.outage.down_since is None
    assert worst() < LOOP_STALL, worst()


async def test_a_trip_under_load_keeps_every_admitted_outcome(
    store: PostgresStorage, pg_dsn: str
) -> None:
    """500 failing calls at once: some run, the rest are rejected, every run is counted."""
    events: list[tuple[CircuitState, CircuitState]] = []
    policy = CircuitProtectorPolicy(
        resource_key=KEY,
        storage=store,
        failure_limit=Fraction(1, 2),
        window_size=20,
        cooldown=timedelta(hours=1),
        on_status_change=lambda p, old, new: events.append((old, new)),
    )
    rng = random.Random(11)
    delays = [rng.uniform(0, 0.01) for _ in range(TASKS)]
    ran: list[int] = []

    @policy
    async def call(n: int) -> int:
        await asyncio.sleep(delays[n])
        ran.append(n)
        raise Failed(n)

    blocking = blocking_pool_uses(store)
    async with loop_lag() as worst:
        results, peak = await run_all(store, call)
    assert blocking == []
    assert peak >= TASKS - 100
    failed = [r for r in results if isinstance(r, Failed)]
    rejected = [r for r in results if isinstance(r, ProtectedCallError)]
    assert len(failed) + len(rejected) == TASKS
    assert len(failed) == len(ran) >= 20
    assert all(r.state is CircuitState.OPEN for r in rejected)
    row = counters(pg_dsn)
    # Calls admitted before the trip finish after it: counted, but they move nothing.
    assert (row["successes"], row["failures"]) == (0, len(ran))
    assert (row["state"], row["generation"]) == ("OPEN", 1)
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert worst() < LOOP_STALL, worst()
