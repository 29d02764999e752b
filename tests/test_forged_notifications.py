"""Notifications forged by any role that can connect: whatever they make this process do
again, they cannot change the breaker's configuration nor make it say the same thing again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError, _installer
from resilient_circuit.cli.connect import connect
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres import notify

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


def _ac_watcher_and_c_forger(pg_dsn: str, pg_role: Callable[[], Any]) -> tuple[str, str]:
    """A role granted 'a' and 'c', and one granted only 'c': their DSNs."""
    watcher, forger = pg_role(), pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=watcher, namespaces=["a", "c"])
        _installer.install(conn, app_role=forger, namespaces=["c"])
    return watcher.dsn(pg_dsn), forger.dsn(pg_dsn)


def _forge_a_on_cs_channel_then_trip_c(pg_dsn: str, forger: str) -> None:
    """The forger claims a transition of 'a' on 'c''s channel; then 'c' really trips."""
    with psycopg.connect(forger, autocommit=True) as conn:
        on_c = conn.execute("SELECT rc_channel('c')").fetchone()
        assert on_c is not None
        conn.execute("SELECT pg_notify(%s, %s)", (on_c[0], FORGED_A))
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        owner.execute("SELECT * FROM rc_record('sentinel', false, 'c')")


FORGED_A = json.dumps(
    {
        "namespace": "a",
        "key": "payments",
        "from": "CLOSED",
        "to": "OPEN",
        "generation": 7,
        "open_until": None,
    }
)


def _watching(pg_dsn: str, watcher: str) -> bool:
    """The watcher's session has run its statements and waits idle, i.e. it listens."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND usename = %s AND state = 'idle' AND query <> ''",
            (conninfo_to_dict(watcher)["user"],),
        ).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.parametrize("how", ["watch", "awatch"])
def test_watch_drops_a_namespace_claimed_on_another_namespaces_channel(
    pg_dsn: str, pg_role: Callable[[], Any], how: str
) -> None:
    """A transition of 'a' sent on 'c''s channel is not yielded; the real one of 'c' is."""
    watcher, forger = _ac_watcher_and_c_forger(pg_dsn, pg_role)

    def forge() -> None:
        assert wait_for(lambda: _watching(pg_dsn, watcher), timeout=30)
        _forge_a_on_cs_channel_then_trip_c(pg_dsn, forger)

    seen: list[tuple[str, str]] = []
    forger_thread = threading.Thread(target=forge)
    forger_thread.start()
    if how == "watch":
        for event in notify.watch(watcher, timeout=30, schema="public", namespaces=["a", "c"]):
            seen.append((event.namespace, event.resource_key))
            if event.resource_key == "sentinel":
                break
    else:

        async def collect() -> None:
            events = notify.awatch(watcher, timeout=30, schema="public", namespaces=["a", "c"])
            async with contextlib.aclosing(events):
                async for event in events:
                    seen.append((event.namespace, event.resource_key))
                    if event.resource_key == "sentinel":
                        break

        asyncio.run(collect())
    forger_thread.join()
    assert seen == [("c", "sentinel")]


def test_a_subscriber_never_hears_a_namespace_claimed_on_another_namespaces_channel(
    pg_dsn: str, pg_role: Callable[[], Any]
) -> None:
    """A store's listener drops the forged 'a' transition and delivers the real 'c' one."""
    watcher, forger = _ac_watcher_and_c_forger(pg_dsn, pg_role)
    seen: list[tuple[str, str]] = []

    def heard(event: notify.Transition | None) -> None:
        if event is not None:
            seen.append((event.namespace, event.resource_key))

    listener = notify.Listener(
        watcher,
        {"autocommit": True},
        heard,
        schema="public",
        namespaces=["a", "c"],
        check_route=False,
    )
    listener.start()
    try:
        assert listener.wait_until_listening(30)
        _forge_a_on_cs_channel_then_trip_c(pg_dsn, forger)
        assert wait_for(lambda: ("c", "sentinel") in seen, timeout=30)
    finally:
        listener.stop()
    assert seen == [("c", "sentinel")]
