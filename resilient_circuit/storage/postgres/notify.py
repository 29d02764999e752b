"""Transitions announced by the database (LISTEN/NOTIFY).

Every ``rc_*`` function that changes a breaker's state notifies in the same
transaction, so listeners learn of a peer's trip as soon as it commits, without
polling. Each namespace has its own channel, named from a secret of the install:
any role that can connect may LISTEN on any channel, so only a role allowed the
namespace can learn its name. ``rc_listen`` LISTENs on a namespace's channel inside the
database (so the name never appears in a statement's text), ``rc_listen_all`` on those of
every transition the caller may see (for the owner and ``'*'``, one channel of all).
A notification counts only on its own namespace's channel.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from resilient_circuit._machine import CircuitState
from resilient_circuit._settings import database_schema
from resilient_circuit.storage.postgres.connection import reaches_server

logger = logging.getLogger("resilient_circuit.storage")


@dataclass(frozen=True, slots=True)
class Transition:
    """One breaker changed state somewhere in the fleet."""

    namespace: str
    resource_key: str
    old: CircuitState
    new: CircuitState
    generation: int
    open_until: datetime | None

    @classmethod
    def parse(cls, payload: str) -> Transition | None:
        """The notification's JSON, or None when it is not one of ours.

        Any role that can connect may send any payload, so nothing in it may raise: too
        long or too deeply nested is refused before parsing, and every field is checked.
        """
        if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD or _too_deep(payload):
            return None
        try:
            raw = json.loads(payload)
            if not isinstance(raw, dict):
                return None
            namespace, key, generation = raw["namespace"], raw["key"], raw["generation"]
            if not (_is_name(namespace) and _is_name(key)):
                return None
            if type(generation) is not int or not 0 <= generation <= _BIGINT_MAX:
                return None
            until = raw.get("open_until")
            open_until = None
            if until is not None:
                if not isinstance(until, str) or len(until) > 40:
                    return None
                open_until = datetime.fromisoformat(until)
                if open_until.tzinfo is None or open_until.year > _LAST_YEAR:
                    return None
            return cls(
                namespace=namespace,
                resource_key=key,
                old=CircuitState(raw["from"]),
                new=CircuitState(raw["to"]),
                generation=generation,
                open_until=open_until,
            )
        except Exception:
            # Malformed in a way not foreseen above: still only a notification to ignore.
            return None


#: NOTIFY payloads are at most 8000 bytes; ours are far shorter.
MAX_PAYLOAD = 8000
_BIGINT_MAX = 2**63 - 1
# Leaves room for arithmetic on the date without overflowing datetime's year 9999.
_LAST_YEAR = 9000
# Ours is one flat object; deeper nesting is refused before json parses (and recurses).
_MAX_DEPTH = 1


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 255


def _too_deep(payload: str) -> bool:
    depth = 0
    in_string = escaped = False
    for ch in payload:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def listen(conn: psycopg.Connection[Any], schema: str, namespace: str) -> str:
    """LISTEN on ``namespace``'s channel and return it (insufficient_privilege if not granted).

    The database runs the LISTEN (``rc_listen``): a channel sent as SQL text would stay
    readable in ``pg_stat_activity`` and ``pg_stat_statements`` by roles without a grant.
    """
    query = sql.SQL("SELECT {}(%s)").format(sql.Identifier(schema, "rc_listen"))
    row = conn.execute(query, [namespace], prepare=False).fetchone()
    assert row is not None
    return str(row[0])


def _listen_query(schema: str, namespaces: Sequence[str] | None) -> tuple[sql.Composed, Any]:
    """LISTEN on the channels of ``namespaces`` (or of all the caller may see), as rows of
    (namespace, channel)."""
    if namespaces is None:
        return sql.SQL("SELECT namespace, channel FROM {}()").format(
            sql.Identifier(schema, "rc_listen_all")
        ), None
    return sql.SQL("SELECT n, {}(n) FROM unnest(%s::text[]) AS n").format(
        sql.Identifier(schema, "rc_listen")
    ), [list(namespaces)]


def _channel_map(rows: Iterable[Any]) -> dict[str, str]:
    """Channel to namespace, from ``rc_listen``/``rc_listen_all`` rows."""
    return {str(channel_name): str(namespace) for namespace, channel_name in rows}


def _from_its_channel(channels: dict[str, str], channel_name: str, event: Transition) -> bool:
    """Whether ``event`` came on its own namespace's channel (or on that of every namespace).

    A role granted only one namespace can send on that namespace's channel a payload that
    claims another: a listener granted both would otherwise take it for the other's.
    """
    namespace = channels.get(channel_name)
    return namespace == ALL_NAMESPACES or namespace == event.namespace


#: The namespace ``rc_listen_all`` gives for the channel of every namespace's transitions.
ALL_NAMESPACES = "*"


def watch(
    dsn: str,
    *,
    timeout: float | None = None,
    connect_timeout: int = 5,
    password: str | None = None,
    schema: str | None = None,
    namespaces: Sequence[str] | None = None,
) -> Iterator[Transition]:
    """Yield transitions as they are announced, from a dedicated connection.

    Those of ``namespaces`` (default: of every namespace the login role may use), from
    the install in ``schema`` (default: ``RC_DB_SCHEMA``). Ends after ``timeout``
    seconds without a notification (never, when None). Any role that can connect may
    send on a channel it knows: these are announcements, not proof.
    """
    extra: dict[str, Any] = {} if password is None else {"password": password}
    query, params = _listen_query(schema or database_schema(), namespaces)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout, **extra) as conn:
        channels = _channel_map(conn.execute(query, params).fetchall())
        while True:
            received = False
            for note in conn.notifies(timeout=timeout if timeout is not None else 1.0):
                received = True
                event = Transition.parse(note.payload)
                if event is not None and _from_its_channel(channels, note.channel, event):
                    yield event
            if not received and timeout is not None:
                return


async def awatch(
    dsn: str,
    *,
    timeout: float | None = None,
    connect_timeout: int = 5,
    password: str | None = None,
    schema: str | None = None,
    namespaces: Sequence[str] | None = None,
) -> AsyncIterator[Transition]:
    """The coroutine twin of ``watch``, on an async connection."""
    extra: dict[str, Any] = {} if password is None else {"password": password}
    query, params = _listen_query(schema or database_schema(), namespaces)
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=connect_timeout, **extra
    )
    async with conn:
        channels = _channel_map(await (await conn.execute(query, params)).fetchall())
        while True:
            received = False
            async for note in conn.notifies(timeout=timeout if timeout is not None else 1.0):
                received = True
                event = Transition.parse(note.payload)
                if event is not None and _from_its_channel(channels, note.channel, event):
                    yield event
            if not received and timeout is not None:
                return


class Listener:
    """A daemon thread holding one LISTEN connection for a store.

    It listens on the channel of each namespace in ``namespaces``, and of each one
    ``flag(namespace)`` asks for later. ``on_event(transition)`` runs for every
    notification that parses as a transition; ``on_event(None)`` whenever the connection
    is (re)established, or listens on another namespace, since what happened while it
    did not is unknown. A role that knows a channel can notify it, so ``on_event``
    must treat a transition as a hint to ask again, never as a fact.
    ``on_listening(conn)``, when given, runs next on that connection, before the
    namespaces' flags are set: what was cached while not listening can be read again
    there, since every later change is announced. ``on_lost()`` runs whenever a
    listening connection is lost (or the thread stops): what it vouched for is no
    longer vouched for. ``healthy`` is True only while the connection is listening.

    With ``check_route``, a connection that turns out to go through a connection
    pooler (which cannot deliver notifications in transaction pooling) is given up
    for good: ``refused`` becomes True and ``on_refused()`` runs once.
    A connection the network lost without a word (no reset, no FIN) would look healthy
    until TCP gives up, hours later: every ``heartbeat_interval`` seconds a round trip
    must come back within ``heartbeat_timeout``, or the connection is cut (and lost).
    """

    heartbeat_interval = 5.0
    heartbeat_timeout = 5.0

    def __init__(
        self,
        dsn: str,
        connect_kwargs: dict[str, Any],
        on_event: Callable[[Transition | None], None],
        *,
        schema: str,
        namespaces: Iterable[str] = (),
        check_route: bool = True,
        on_refused: Callable[[], None] | None = None,
        on_listening: Callable[[psycopg.Connection[Any]], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._check_route = check_route
        self._on_refused = on_refused
        self.refused = False
        self._kwargs = {k: v for k, v in connect_kwargs.items() if k != "options"}
        self._on_event = on_event
        self._on_listening = on_listening
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._listening = threading.Event()
        # Per namespace: set exactly while its channel is listened on. A namespace is
        # added, never removed; only the thread sets and clears them.
        self._flags: dict[str, threading.Event] = {ns: threading.Event() for ns in namespaces}
        # The namespaces the current connection listens on (or was refused), thread-only.
        self._heard: set[str] = set()
        # Channel to namespace, for the current connection (thread-only).
        self._channels: dict[str, str] = {}
        self._warned_missing = False

    @property
    def healthy(self) -> bool:
        return self._listening.is_set()

    def flag(self, namespace: str) -> threading.Event:
        """Set exactly while ``namespace``'s channel is listened on (asked for from now on).

        For callers that test it on every call: a verdict cached for a breaker of that
        namespace holds only while it is set.
        """
        found = self._flags.get(namespace)
        if found is None:
            with self._lock:
                found = self._flags.setdefault(namespace, threading.Event())
        return found

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="resilient_circuit-listener", daemon=True
                )
                self._thread.start()

    def wait_until_listening(self, timeout: float) -> bool:
        """Wait until the connection listens on every namespace asked for so far."""
        deadline = time.monotonic() + timeout
        if not self._listening.wait(timeout):
            return False
        flags = list(self._flags.values())
        return all(f.wait(max(0.0, deadline - time.monotonic())) for f in flags)

    def stop(self) -> None:
        """Stop listening; returns once the thread has ended, even mid-reconnect.

        The thread checks the stop at least every half second, except while it connects
        (``connect_timeout``) or waits for a heartbeat (``heartbeat_timeout``): the wait
        is bounded by those, so that close() leaves no thread behind.
        """
        self._stop.set()
        thread = self._thread
        # Not from the thread itself (a subscriber closing the store): it ends on its own.
        if thread is not None and thread is not threading.current_thread():
            connecting = float(self._kwargs.get("connect_timeout") or 5)
            thread.join(max(5.0, connecting + self.heartbeat_timeout + 1.0))

    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, **self._kwargs) as conn:
                    if self._check_route and not reaches_server(conn):
                        self._refuse()
                        return
                    self._heard = set()
                    self._channels = {}
                    self._listen_new(conn)
                    self._listening.set()
                    backoff = 0.25
                    beat = time.monotonic() + self.heartbeat_interval
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            event = Transition.parse(note.payload)
                            if event is not None and _from_its_channel(
                                self._channels, note.channel, event
                            ):
                                self._on_event(event)
                        if len(self._flags) > len(self._heard):
                            self._listen_new(conn)
                        if time.monotonic() >= beat:
                            self._heartbeat(conn)
                            beat = time.monotonic() + self.heartbeat_interval
            except psycopg.errors.UndefinedFunction as exc:
                # An install older than secret channels: nothing to listen on until upgraded.
                log = logger.debug if self._warned_missing else logger.warning
                self._warned_missing = True
                log("transition listener: %s; run `resilient-circuit-cli pg-setup`", exc)
            except psycopg.Error as exc:
                logger.debug("transition listener disconnected: %s", exc)
            except Exception:
                # Whatever went wrong, the thread must live on: it is what revokes a held
                # OPEN verdict and keeps cached admission honest. Reconnecting (which
                # also drops every cached verdict) is the safe way back.
                logger.exception("transition listener failed; reconnecting in %.2f s", backoff)
            finally:
                self._lost()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _listen_new(self, conn: psycopg.Connection[Any]) -> None:
        """LISTEN on the channels of the namespaces not listened on yet, then vouch for them.

        What was cached before is dropped (``on_event(None)``) and read again
        (``on_listening``) once the LISTEN is in place, so nothing changed in between
        goes unheard; only then are the namespaces' flags set.
        """
        with self._lock:
            wanted = [ns for ns in self._flags if ns not in self._heard]
        listened: list[str] = []
        for namespace in wanted:
            self._heard.add(namespace)
            try:
                name = listen(conn, self._schema, namespace)
            except psycopg.errors.InsufficientPrivilege as exc:
                # Its calls fail the same way: nothing to vouch for, and nothing to retry.
                logger.warning("transition listener: %s", exc)
                continue
            self._channels[name] = namespace
            listened.append(namespace)
        self._on_event(None)
        if self._on_listening is not None:
            self._on_listening(conn)
        for namespace in listened:
            self._flags[namespace].set()

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        """One round trip, or the connection cut once ``heartbeat_timeout`` has passed.

        Cutting (shutting its socket down) ends the wait at once, with an error that
        reconnects. Notifications that arrive meanwhile are kept for ``notifies``.
        """
        # A socket of its own on the same connection: the watchdog never touches a file
        # descriptor the connection may have closed (and the system handed out again).
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        watchdog = threading.Timer(self.heartbeat_timeout, _cut, (sock,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.execute("SELECT 1", prepare=False)
        finally:
            watchdog.cancel()
            watchdog.join()
            sock.close()

    def _lost(self) -> None:
        flags = [f for f in list(self._flags.values()) if f.is_set()]
        if not (flags or self._listening.is_set()):
            return
        self._listening.clear()
        for each in flags:
            each.clear()
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                logger.exception("transition listener: handling the lost connection failed")

    def _refuse(self) -> None:
        self.refused = True
        if self._on_refused is not None:
            self._on_refused()


def _cut(sock: socket.socket) -> None:
    """Shut a connection's socket down, so that a read waiting on it ends now."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
