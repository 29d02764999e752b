"""A breaker's row deleted and made anew (``rc_gc``, ``rc_forget``) starts its generations
over at 0: a process that knew a higher generation must still follow the new row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import PostgresStorage

from ._helpers import wait_for

NAMESPACE = "restart"


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    yield made
    made.close()


@pytest.mark.parametrize("recording", ["immediate", "batched"])
def test_cached_admission_follows_a_row_collected_and_tripped_by_a_peer(
    store: PostgresStorage, pg_dsn: str, recording: str
) -> None:
    """``rc_gc`` deletes an idle CLOSED row without a notification; a peer makes it anew
    and trips it (generation 1). This process knew generation 4: the server's OPEN wins,
    on every call, not only on the first one after the trip was announced."""
    policy = CircuitProtectorPolicy(
        resource_key="svc",
        storage=store,
        admission="cached",
        recording=recording,
        cooldown=timedelta(hours=1),
    )

    @policy
    def call() -> str:
        return "ok"

    for state in ("OPEN", "CLOSED", "OPEN", "CLOSED"):  # generation 4, CLOSED
        policy.force(CircuitState[state])
    assert call() == "ok"
    assert store.wait_listening()
    assert call() == "ok"
    breaker = store.breakers()[0]
    assert breaker.last_known is not None
    assert breaker.last_known.generation == 4
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        assert peer.execute("SELECT rc_gc(interval '0')").fetchone() == (1,)
        peer.execute("SELECT * FROM rc_configure('svc', %s)", (NAMESPACE,))
        peer.execute("SELECT * FROM rc_force('svc', 'OPEN', %s, true)", (NAMESPACE,))
    assert wait_for(lambda: not breaker._trusted)  # the trip was announced
    for _ in range(3):
        with pytest.raises(ProtectedCallError):
            call()
    assert store.get_state("svc")["state"] == "OPEN"  # type: ignore[index]


def test_outcomes_after_a_restart_count_in_the_new_row(store: PostgresStorage, pg_dsn: str) -> None:
    """Admitted by the new row's generation, a failure is recorded in it (an outcome of a
    generation the row does not have would be dropped by the server)."""
    policy = CircuitProtectorPolicy(
        resource_key="svc", storage=store, admission="cached", failure_limit=Fraction(1, 2)
    )

    @policy
    def fail() -> None:
        raise ValueError("boom")

    for state in ("OPEN", "CLOSED", "OPEN", "CLOSED"):
        policy.force(CircuitState[state])
    assert store.wait_listening()
    breaker = store.breakers()[0]
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        assert peer.execute("SELECT rc_gc(interval '0')").fetchone() == (1,)
        peer.execute("SELECT * FROM rc_configure('svc', %s, 1, 2)", (NAMESPACE,))
        peer.execute("SELECT * FROM rc_force('svc', 'OPEN', %s)", (NAMESPACE,))
        peer.execute("SELECT * FROM rc_force('svc', 'CLOSED', %s)", (NAMESPACE,))
    assert wait_for(lambda: not breaker._trusted)
    for _ in range(2):
        with pytest.raises(ValueError, match="boom"):
            fail()
    # Both failures counted: the window of two is full, and the breaker trips.
    assert store.get_state("svc")["state"] == "OPEN"  # type: ignore[index]
