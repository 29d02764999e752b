"""Transition channels against roles without a grant: nothing to hear, nothing to compute.

Any role that can connect may LISTEN on any channel, so a namespace's transitions go to
a channel named from a secret only the owner reads, handed out by ``rc_channel`` to the
roles the namespace is granted to. Every role is created by the test and logs in itself.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError, _installer
from resilient_circuit.cli.connect import connect
from resilient_circuit.storage import PostgresStorage
from tests._helpers import count_round_trips, wait_for

if TYPE_CHECKING:
    from tests.conftest import PgRole

Conn = psycopg.Connection[Any]


def _app(pg_dsn: str, role: PgRole, *namespaces: str) -> str:
    """Grant ``role`` the functions for ``namespaces``; return a DSN logging in as it."""
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=role, namespaces=list(namespaces))
    return role.dsn(pg_dsn)


def _listen_everywhere_it_can(conn: Conn) -> list[str]:
    """LISTEN on the old well-known channel and on every channel the role can obtain."""
    channels = ["resilient_circuit"]
    try:
        channels += [row[1] for row in conn.execute("SELECT * FROM rc_channels()")]
    except psycopg.errors.UndefinedFunction:
        pass  # an install without secret channels: the well-known one is all there is
    for channel in channels:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return channels


def _trip(conn: Conn, key: str, namespace: str, schema: str = "public") -> None:
    """One failure: a breaker never configured (failure limit 1/1) trips to OPEN."""
    conn.execute(
        sql.SQL("SELECT * FROM {}(%s, false, %s)").format(sql.Identifier(schema, "rc_record")),
        (key, namespace),
    )


def _heard_until(listener: Conn, namespace: str, key: str) -> list[dict[str, Any]]:
    """Every payload heard up to the one announcing ``namespace``/``key``, which comes last.

    Notifications are delivered in commit order: once the later one arrived, the earlier
    transitions would have been heard already if they had been sent to this session.
    """
    heard: list[dict[str, Any]] = []
    for note in listener.notifies(timeout=30):
        payload = json.loads(note.payload)
        heard.append(payload)
        if (payload["namespace"], payload["key"]) == (namespace, key):
            return heard
    pytest.fail(f"the transition of {namespace}/{key} was never heard")


def test_a_role_without_the_namespace_hears_none_of_its_transitions(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A role granted only 'c', listening on every channel it can name, hears nothing of 'a'."""
    outsider = _app(pg_dsn, pg_role(), "c")
    with psycopg.connect(outsider, autocommit=True) as spy, connect(pg_dsn) as owner:
        owner.autocommit = True
        _listen_everywhere_it_can(spy)
        _trip(owner, "payments", "a")
        _trip(owner, "sentinel", "c")  # its own namespace: heard, and heard after 'a''s
        heard = _heard_until(spy, "c", "sentinel")
    assert [(p["namespace"], p["key"]) for p in heard] == [("c", "sentinel")]


def test_a_role_granted_only_c_cannot_obtain_the_channel_of_a(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """rc_channel('a') refuses a role granted only 'c' as every function does; rc_channels too."""
    outsider = _app(pg_dsn, pg_role(), "c")
    with psycopg.connect(outsider, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not use namespace 'a'"):
            conn.execute("SELECT rc_channel('a')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not use namespace"):
            conn.execute("SELECT * FROM rc_status('k', 'a')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM rc_notify_secret")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rc_notify_channel('a')")
        rows = conn.execute("SELECT * FROM rc_channels()").fetchall()
        (own,) = conn.execute("SELECT rc_channel('c')").fetchone() or ("",)
    assert rows == [("c", own)]
    with connect(pg_dsn) as owner:
        a_channel, every = owner.execute(
            "SELECT rc_channel('a'), (SELECT channel FROM rc_channels())"
        ).fetchone() or ("", "")
    assert len({own, a_channel, every, "resilient_circuit"}) == 4
    assert all(len(c) == 43 and c.startswith("rc_") for c in (own, a_channel, every))


def test_a_granted_role_hears_its_namespace_and_a_star_role_hears_all(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """The channel rc_channel gives carries the namespace's transitions; '*' gets every one."""
    granted = _app(pg_dsn, pg_role(), "a")
    everything = _app(pg_dsn, pg_role(), "*")
    with (
        psycopg.connect(granted, autocommit=True) as mine,
        psycopg.connect(everything, autocommit=True) as all_of_them,
        connect(pg_dsn) as owner,
    ):
        owner.autocommit = True
        (channel,) = mine.execute("SELECT rc_channel('a')").fetchone() or ("",)
        mine.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        assert [r[0] for r in _listen_star(all_of_them)] == ["*"]
        _trip(owner, "other", "b")
        _trip(owner, "payments", "a")
        heard = _heard_until(mine, "a", "payments")
        heard_all = _heard_until(all_of_them, "a", "payments")
    assert [(p["namespace"], p["key"], p["to"]) for p in heard] == [("a", "payments", "OPEN")]
    assert [(p["namespace"], p["key"]) for p in heard_all] == [("b", "other"), ("a", "payments")]


def _listen_star(conn: Conn) -> list[tuple[str, str]]:
    rows = [(r[0], r[1]) for r in conn.execute("SELECT * FROM rc_channels()")]
    for _, channel in rows:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return rows


def test_two_installs_in_one_database_do_not_hear_each_other(pg_dsn: str) -> None:
    """Another schema's install has its own secret: the same namespace, another channel."""
    with connect(pg_dsn) as conn:
        _installer.install(conn, schema="rc_other")
    with psycopg.connect(pg_dsn, autocommit=True) as listener, connect(pg_dsn) as owner:
        owner.autocommit = True
        (here,) = listener.execute("SELECT public.rc_channel('shop')").fetchone() or ("",)
        (there,) = listener.execute("SELECT rc_other.rc_channel('shop')").fetchone() or ("",)
        assert here != there
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(here)))
        _trip(owner, "payments", "shop", schema="rc_other")
        _trip(owner, "sentinel", "shop")
        heard = _heard_until(listener, "shop", "sentinel")
    assert [p["key"] for p in heard] == ["sentinel"]


# ------------------------------------------------------------------------------ the store


def _cached(store: PostgresStorage, key: str, namespace: str) -> Callable[[], str]:
    policy = CircuitProtectorPolicy(
        resource_key=key,
        storage=store,
        namespace=namespace,
        admission="cached",
        cooldown=timedelta(minutes=5),
    )

    @policy
    def call() -> str:
        return "ok"

    return call


def test_a_store_listens_on_each_namespace_its_breakers_use(pg_dsn: str) -> None:
    """A breaker of a second namespace, bound once listening, is invalidated by a peer's trip."""
    store = PostgresStorage(pg_dsn, namespace="first")
    try:
        first = _cached(store, "svc", "first")
        assert first() == "ok"
        assert store.wait_listening()
        second = _cached(store, "svc", "second")  # a namespace the listener did not know
        assert second() == "ok"
        assert store.wait_listening()
        assert second() == "ok"  # now served from the cached verdict
        with connect(pg_dsn) as owner:
            owner.autocommit = True
            owner.execute("SELECT * FROM rc_force('svc', 'OPEN', 'second')")
        breaker = store.breakers()[1]
        assert breaker.namespace == "second"
        assert wait_for(lambda: not breaker._trusted)  # type: ignore[attr-defined]
        with pytest.raises(ProtectedCallError):
            second()
        assert first() == "ok"
    finally:
        store.close()


def test_a_store_whose_listen_role_lacks_the_namespace_never_trusts_a_cached_verdict(
    pg_dsn: str, pg_role: Callable[[], PgRole], caplog: pytest.LogCaptureFixture
) -> None:
    """A LISTEN role not granted the namespace is refused its channel: every call asks."""
    elsewhere = _app(pg_dsn, pg_role(), "c")
    store = PostgresStorage(pg_dsn, namespace="a", listen_dsn=elsewhere)
    try:
        call = _cached(store, "svc", "a")
        assert call() == "ok"
        assert wait_for(lambda: "may not use namespace 'a'" in caplog.text, timeout=30)
        assert not store.listening("a")
        with connect(pg_dsn) as owner:
            owner.autocommit = True
            owner.execute("SELECT * FROM rc_force('svc', 'OPEN', 'a')")
        with pytest.raises(ProtectedCallError):
            call()
    finally:
        store.close()


def test_watch_as_a_role_granted_c_yields_only_c(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """The store's watch listens on the channels of the login role's namespaces only."""
    outsider = _app(pg_dsn, pg_role(), "c")
    store = PostgresStorage(outsider, namespace="c")
    seen: list[tuple[str, str]] = []
    try:
        events = store.watch(timeout=30)

        def trip_when_listening() -> None:
            assert wait_for(lambda: _listeners(pg_dsn) > 0, timeout=30)
            with connect(pg_dsn) as owner:
                owner.autocommit = True
                _trip(owner, "payments", "a")
                _trip(owner, "sentinel", "c")

        tripper = threading.Thread(target=trip_when_listening)
        tripper.start()
        for event in events:
            seen.append((event.namespace, event.resource_key))
            if event.resource_key == "sentinel":
                break
        tripper.join()
    finally:
        store.close()
    assert seen == [("c", "sentinel")]


def _listeners(pg_dsn: str) -> int:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle' AND query ILIKE '%%rc\\_listen%%'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_schema_without_secret_channels_is_named_and_cached_admission_asks(
    pg_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an install older than rc_listen (0019) the listener says to run pg-setup."""
    with connect(pg_dsn) as owner:
        owner.autocommit = True
        owner.execute("DROP FUNCTION rc_listen(text)")
        owner.execute("DROP FUNCTION rc_listen_all()")
    store = PostgresStorage(pg_dsn, namespace="old")
    try:
        call = _cached(store, "svc", "old")
        assert call() == "ok"
        assert wait_for(lambda: "pg-setup" in caplog.text, timeout=30)
        assert not store.listening("old")
        sent = count_round_trips(monkeypatch, store)
        assert call() == "ok"
        assert len(sent) == 2  # admission asked, then the outcome was recorded
    finally:
        store.close()


def test_no_statement_text_names_a_channel_to_a_monitoring_role(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """pg_read_all_stats reads every query: none of a watcher's or listener's names a channel."""
    app = _app(pg_dsn, pg_role(), "a")
    monitor = pg_role()
    with connect(pg_dsn) as owner:
        owner.autocommit = True
        owner.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(monitor)))
        secrets = [
            str(owner.execute("SELECT rc_channel('a')").fetchone()[0]),  # type: ignore[index]
            str(owner.execute("SELECT channel FROM rc_channels()").fetchone()[0]),  # type: ignore[index]
        ]
    store = PostgresStorage(app, namespace="a")
    heard: list[str] = []
    watched: list[str] = []
    try:
        store.subscribe(lambda event: heard.append(event.resource_key))
        assert store.wait_listening()
        events = store.watch(timeout=30)

        def trip_when_watching() -> None:
            assert wait_for(lambda: _listeners(pg_dsn) > 1, timeout=30)
            with psycopg.connect(monitor.dsn(pg_dsn), autocommit=True) as spy:
                queries = [str(q) for (q,) in spy.execute("SELECT query FROM pg_stat_activity")]
            watched.extend(q for q in queries if any(s in q for s in secrets))
            with connect(pg_dsn) as owner:
                owner.autocommit = True
                _trip(owner, "payments", "a")

        tripper = threading.Thread(target=trip_when_watching)
        tripper.start()
        for event in events:
            if event.resource_key == "payments":
                break
        tripper.join()
        assert wait_for(lambda: "payments" in heard, timeout=30)
    finally:
        store.close()
    assert watched == []


def test_rc_listen_refuses_a_namespace_not_granted_and_null(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """rc_listen('a') is refused a role granted only 'c'; NULL is refused naming p_namespace."""
    outsider = _app(pg_dsn, pg_role(), "c")
    with psycopg.connect(outsider, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rc_listen('a')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_namespace"):
            conn.execute("SELECT rc_listen(NULL)")
        rows = conn.execute("SELECT namespace FROM rc_listen_all()").fetchall()
        assert rows == [("c",)]
        listening = conn.execute("SELECT pg_listening_channels()").fetchall()
        assert [row[0] for row in listening] == [
            conn.execute("SELECT rc_channel('c')").fetchone()[0]  # type: ignore[index]
        ]


def test_the_upgrade_to_rc_listen_grants_it_to_the_roles_that_could_call(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Applying 0019 to an install whose app role could call rc_try_acquire lets it listen."""
    app = _app(pg_dsn, pg_role(), "a")
    with connect(pg_dsn) as owner:
        owner.autocommit = True
        owner.execute("DROP FUNCTION rc_listen(text)")
        owner.execute("DROP FUNCTION rc_listen_all()")
        owner.execute("DELETE FROM rc_schema_migrations WHERE version = 19")
        ran = _installer.install(owner)
    assert any("rc_listen" in statement for statement in ran)
    with psycopg.connect(app, autocommit=True) as conn:
        assert conn.execute("SELECT namespace FROM rc_listen_all()").fetchall() == [("a",)]
        assert conn.execute("SELECT rc_listen('a')").fetchone() is not None
