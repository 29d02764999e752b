"""Transition channels against roles without a grant: nothing to hear, nothing to compute.

Any role that can connect may LISTEN on any channel, so a namespace's transitions go to
a channel named from a secret only the owner reads, handed out by ``rc_channel`` to the
roles the namespace is granted to. Every role is created by the test and logs in itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from resilient_circuit import _installer
from resilient_circuit.cli.connect import connect

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
