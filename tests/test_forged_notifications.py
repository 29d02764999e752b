"""Notifications forged by any role that can connect: whatever they make this process do
again, they cannot change the breaker's configuration nor make it say the same thing again."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError
from resilient_circuit.storage import PostgresStorage

from ._helpers import channel, wait_for

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
STORED = "SELECT window_size, window_duration, cooldown FROM rc_status('svc', %s)"


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    yield made
    made.close()


@pytest.fixture
def peer_store(pg_dsn: str) -> Iterator[PostgresStorage]:
    """Another process's store: its own pool and its own LISTEN connection."""
    made = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    yield made
    made.close()


def _listening(store: PostgresStorage) -> None:
    store.subscribe(lambda event: None)
    assert store.wait_listening()


def _forge(pg_dsn: str, *stores: PostgresStorage) -> None:
    """Announce the row forgotten, as any role can, and wait until every store heard it."""
    with psycopg.connect(pg_dsn, autocommit=True) as attacker:
        # A role that learnt the channel's name (one granted the namespace, say).
        attacker.execute("SELECT pg_notify(%s, %s)", (channel(pg_dsn, NAMESPACE), FORGOTTEN))
    for each in stores:
        breaker = each.breakers()[0]
        assert wait_for(lambda b=breaker: not b.is_configured)  # type: ignore[misc]


def _calls(policy: CircuitProtectorPolicy) -> tuple[Callable[[], str], Callable[[], None]]:
    @policy
    def succeed() -> str:
        return "ok"

    @policy
    def fail() -> None:
        raise ValueError("boom")

    return succeed, fail


def test_forged_forgets_cannot_keep_a_disagreeing_fleet_from_tripping(
    store: PostgresStorage, peer_store: PostgresStorage, pg_dsn: str
) -> None:
    """A rolling deploy: one process declares a time window, the other a count window of
    two failures. Each forged "forgotten" used to make both store their own again, and
    each change of window kind emptied the window, so failures never added up. A restore
    never replaces a stored configuration: the second failure trips the breaker."""
    timed = CircuitProtectorPolicy(
        resource_key="svc",
        storage=store,
        cooldown=timedelta(hours=1),
        window_duration=timedelta(minutes=1),
        minimum_calls=2,
    )
    counted = CircuitProtectorPolicy(
        resource_key="svc", storage=peer_store, cooldown=timedelta(hours=1), window_size=2
    )
    timed_ok, timed_fail = _calls(timed)
    counted_ok, counted_fail = _calls(counted)
    assert timed_ok() == "ok"
    assert counted_ok() == "ok"  # the last declaration wins: a count window of two
    _listening(store)
    _listening(peer_store)
    for fail in (counted_fail, timed_fail, counted_fail, timed_fail):
        _forge(pg_dsn, store, peer_store)
        with pytest.raises((ValueError, ProtectedCallError)):
            fail()
    assert store.get_state("svc")["state"] == "OPEN"  # type: ignore[index]
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        assert peer.execute(STORED, (NAMESPACE,)).fetchone() == (2, None, timedelta(hours=1))


def test_forged_forgets_say_nothing_and_change_nothing(
    store: PostgresStorage, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process stores its (different) configuration; forged "forgotten"
    announcements cost this one a round trip each, replace nothing, and say nothing."""
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, cooldown=timedelta(hours=1))
    succeed, _ = _calls(policy)
    assert succeed() == "ok"
    _listening(store)
    caplog.set_level(logging.WARNING, logger="resilient_circuit.storage")
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        peer.execute(
            "SELECT * FROM rc_configure('svc', %s, p_cooldown => interval '2 seconds')",
            (NAMESPACE,),
        )
        for _ in range(5):
            _forge(pg_dsn, store)
            assert succeed() == "ok"
            assert store.breakers()[0].is_configured
        stored = peer.execute(STORED, (NAMESPACE,)).fetchone()
    assert stored == (1, None, timedelta(seconds=2))
    differing = [r for r in caplog.records if "stored configuration differs" in r.getMessage()]
    assert differing == []


def test_a_forged_forget_before_the_first_call_keeps_the_declaration(
    store: PostgresStorage, pg_dsn: str
) -> None:
    """Forged before this process first stored its configuration, a "forgotten" does not
    turn its declaration into a restore: starting, it still replaces the stored one."""
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, cooldown=timedelta(hours=1))
    succeed, _ = _calls(policy)
    heard = threading.Event()
    store.subscribe(lambda event: heard.set())
    assert store.wait_listening()
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        peer.execute(
            "SELECT * FROM rc_configure('svc', %s, p_cooldown => interval '2 seconds')",
            (NAMESPACE,),
        )
        peer.execute("SELECT pg_notify(%s, %s)", (channel(pg_dsn, NAMESPACE), FORGOTTEN))
        assert heard.wait(5)
        assert succeed() == "ok"
        assert peer.execute(STORED, (NAMESPACE,)).fetchone() == (1, None, timedelta(hours=1))


@pytest.mark.parametrize("made_anew_by", ["nobody", "an outcome"])
def test_a_real_forget_restores_the_configuration(
    store: PostgresStorage, pg_dsn: str, made_anew_by: str
) -> None:
    """``rc_forget`` deletes the row and announces it: the configuration is stored again,
    into a missing row or one a peer's outcome made anew with the defaults."""
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, cooldown=timedelta(hours=1))
    succeed, _ = _calls(policy)
    assert succeed() == "ok"
    _listening(store)
    breaker = store.breakers()[0]
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        assert peer.execute("SELECT rc_forget('svc', %s)", (NAMESPACE,)).fetchone() == (True,)
        assert wait_for(lambda: not breaker.is_configured)
        if made_anew_by == "an outcome":
            peer.execute("SELECT * FROM rc_record('svc', true, %s)", (NAMESPACE,))
        assert succeed() == "ok"
        assert peer.execute(STORED, (NAMESPACE,)).fetchone() == (1, None, timedelta(hours=1))


def _window(conn: psycopg.Connection[Any]) -> Any:
    return conn.execute(
        "SELECT window_size, cooldown, execution_log FROM rc_status('svc', %s)", (NAMESPACE,)
    ).fetchone()


def test_rc_configure_p_restore_stores_only_where_nothing_is_stored(pg_dsn: str) -> None:
    """p_restore: a missing row and a row made by an outcome get the configuration; a
    row someone configured keeps its own, and its window, untouched."""
    restore = (
        "SELECT * FROM rc_configure('svc', %s, 1, 2, p_cooldown => interval '1 hour',"
        " p_restore => true)"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute(restore, (NAMESPACE,)).fetchone() == ("CLOSED", 0)
        assert _window(conn) == (2, timedelta(hours=1), "")
        conn.execute("SELECT rc_forget('svc', %s)", (NAMESPACE,))
        conn.execute("SELECT * FROM rc_record('svc', true, %s)", (NAMESPACE,))
        conn.execute(restore, (NAMESPACE,))
        assert _window(conn) == (2, timedelta(hours=1), "S")
        conn.execute(
            "SELECT * FROM rc_configure('svc', %s, 1, 3, p_window_duration => interval '1 minute')",
            (NAMESPACE,),
        )
        conn.execute("SELECT * FROM rc_record('svc', false, %s)", (NAMESPACE,))
        before = conn.execute("SELECT * FROM rc_status('svc', %s)", (NAMESPACE,)).fetchone()
        assert conn.execute(restore, (NAMESPACE,)).fetchone() == ("CLOSED", 0)
        after = conn.execute("SELECT * FROM rc_status('svc', %s)", (NAMESPACE,)).fetchone()
        assert after == before
