"""The ``demo`` stories: in memory with threads, and across processes through PostgreSQL."""

from __future__ import annotations

import pytest

from resilient_circuit import CircuitState
from resilient_circuit.cli.demo import run_memory_demo, run_postgres_demo

CLOSED, OPEN = CircuitState.CLOSED, CircuitState.OPEN


def test_memory_demo_opens_rejects_and_closes_again() -> None:
    """A short in-memory run trips the breaker, rejects calls while open and closes again."""
    lines: list[str] = []
    result = run_memory_demo(threads=3, seconds=2.0, echo=lines.append)

    changes = [(t.old, t.new) for t in result.transitions]
    assert (CLOSED, OPEN) in changes
    assert changes[-1][1] is CLOSED
    assert result.final_state is CLOSED
    assert result.rejected > 0
    assert result.failed > 0
    assert result.ok + result.failed + result.rejected == sum(
        t.ok + t.failed + t.rejected for t in result.by_caller.values()
    )
    assert any("CLOSED -> OPEN" in line for line in lines)


@pytest.mark.slow
def test_postgres_demo_one_worker_trips_the_breaker_for_all(pg_dsn: str) -> None:
    """Workers that never failed are rejected after another worker trips the shared breaker."""
    lines: list[str] = []
    result = run_postgres_demo(dsn=pg_dsn, workers=3, seconds=4.0, echo=lines.append)

    trips = [t.who for t in result.transitions if t.caused and (t.old, t.new) == (CLOSED, OPEN)]
    assert trips, lines
    tripper = trips[0]
    others = [who for who in result.by_caller if who != tripper]
    assert len(others) == 2
    for who in others:
        assert result.by_caller[who].rejected > 0, (who, lines)
        assert any(
            t.who == who and not t.caused and (t.old, t.new) == (CLOSED, OPEN)
            for t in result.transitions
        ), (who, lines)
    assert result.final_state is CLOSED
