"""A LISTEN connection the network lost without a word (no reset, no FIN: a partition, a
NAT or load balancer forgetting it) stops vouching for cached verdicts within seconds,
not when TCP gives up hours later."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres import notify

from ._fleet_net import faulty_proxy
from ._helpers import wait_for

NAMESPACE = "heartbeat"


class Failed(Exception):
    pass


def test_a_held_open_verdict_is_not_vouched_for_by_a_silently_lost_listen_connection(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's force CLOSED is never delivered; the lost connection is noticed, the
    verdict held for an hour is dropped, and the next call asks and runs."""
    monkeypatch.setattr(notify.Listener, "heartbeat_interval", 0.2, raising=False)
    monkeypatch.setattr(notify.Listener, "heartbeat_timeout", 0.5, raising=False)
    with faulty_proxy(pg_dsn) as proxy:
        store = PostgresStorage(pg_dsn, namespace=NAMESPACE, listen_dsn=proxy.dsn())
        try:
            policy = CircuitProtectorPolicy(
                resource_key="svc", storage=store, cooldown=timedelta(hours=1)
            )

            @policy
            def call(ok: bool) -> str:
                if not ok:
                    raise Failed
                return "ok"

            def run() -> str | None:
                try:
                    return call(True)
                except ProtectedCallError:
                    return None

            store.listen()
            assert store.wait_listening()
            with pytest.raises(Failed):
                call(False)
            assert run() is None  # held for the whole cooldown: LISTEN is up
            proxy.freeze()
            with psycopg.connect(pg_dsn, autocommit=True) as peer:
                peer.execute("SELECT * FROM rc_force('svc', 'CLOSED', %s)", (NAMESPACE,))
            assert wait_for(lambda: run() == "ok", timeout=30)
        finally:
            store.close()
