"""Notifications forged by any role that can connect: whatever they make this process do
again, they cannot make it say the same thing again."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage

from ._helpers import wait_for

NAMESPACE = "forged"
FORGOTTEN = json.dumps(
    {
        "namespace": NAMESPACE,
        "key": "svc",
        "from": "CLOSED",
        "to": "CLOSED",
        "generation": 0,
        "open_until": None,
    }
)


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    yield made
    made.close()


def test_forged_forgets_repeat_no_configuration_warning(
    store: PostgresStorage, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process stores its (different) configuration; each forged "forgotten"
    makes this one store its own again: the difference is told once, not per forgery."""
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, cooldown=timedelta(hours=1))

    @policy
    def call() -> str:
        return "ok"

    store.subscribe(lambda event: None)
    assert store.wait_listening()
    breaker = store.breakers()[0]
    caplog.set_level(logging.WARNING, logger="resilient_circuit.storage")
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        for _ in range(5):
            peer.execute(
                "SELECT * FROM rc_configure('svc', %s, p_cooldown => interval '2 seconds')",
                (NAMESPACE,),
            )
            peer.execute("SELECT pg_notify('resilient_circuit', %s)", (FORGOTTEN,))
            assert wait_for(lambda: not breaker.is_configured)
            assert call() == "ok"
    differing = [r for r in caplog.records if "stored configuration differs" in r.getMessage()]
    assert len(differing) == 1, [r.getMessage() for r in differing]
