"""Transitions announced by the database (``NOTIFY resilient_circuit``).

Every ``rc_*`` function that changes a breaker's state notifies the channel in the
same transaction, so listeners learn of a peer's trip as soon as it commits,
without polling.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from resilient_circuit._machine import CircuitState
from resilient_circuit.storage.postgres.connection import reaches_server

CHANNEL = "resilient_circuit"

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


def watch(
    dsn: str,
    *,
    timeout: float | None = None,
    connect_timeout: int = 5,
    password: str | None = None,
) -> Iterator[Transition]:
    """Yield transitions as they are announced, from a dedicated connection.

    Ends after ``timeout`` seconds without a notification (never, when None). Any role
    that can connect may send on the channel: these are announcements, not proof.
    """
    extra: dict[str, Any] = {} if password is None else {"password": password}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout, **extra) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        while True:
            received = False
            for note in conn.notifies(timeout=timeout if timeout is not None else 1.0):
                received = True
                event = Transition.parse(note.payload)
                if event is not None:
                    yield event
            if not received and timeout is not None:
                return


async def awatch(
    dsn: str,
    *,
    timeout: float | None = None,
    connect_timeout: int = 5,
    password: str | None = None,
) -> AsyncIterator[Transition]:
    """The coroutine twin of ``watch``, on an async connection."""
    extra: dict[str, Any] = {} if password is None else {"password": password}
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=connect_timeout, **extra
    )
    async with conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        while True:
            received = False
            async for note in conn.notifies(timeout=timeout if timeout is not None else 1.0):
                received = True
                event = Transition.parse(note.payload)
                if event is not None:
                    yield event
            if not received and timeout is not None:
                return


class Listener:
    """A daemon thread holding one LISTEN connection for a store.

    ``on_event(transition)`` runs for every notification that parses as a transition;
    ``on_event(None)`` whenever the connection is (re)established, since what happened
    while it was down is unknown. Any role that can connect can notify the channel, so
    ``on_event`` must treat a transition as a hint to ask again, never as a fact.
    ``on_listening(conn)``, when given, runs next on that connection, before
    ``healthy`` turns True: what was cached while not listening can be read again
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
        check_route: bool = True,
        on_refused: Callable[[], None] | None = None,
        on_listening: Callable[[psycopg.Connection[Any]], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = dsn
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

    @property
    def healthy(self) -> bool:
        return self._listening.is_set()

    @property
    def flag(self) -> threading.Event:
        """Set exactly while ``healthy``: for callers that test it on every call."""
        return self._listening

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="resilient_circuit-listener", daemon=True
                )
                self._thread.start()

    def wait_until_listening(self, timeout: float) -> bool:
        return self._listening.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(5)

    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, **self._kwargs) as conn:
                    if self._check_route and not reaches_server(conn):
                        self._refuse()
                        return
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._on_event(None)
                    if self._on_listening is not None:
                        self._on_listening(conn)
                    self._listening.set()
                    backoff = 0.25
                    beat = time.monotonic() + self.heartbeat_interval
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            event = Transition.parse(note.payload)
                            if event is not None:
                                self._on_event(event)
                        if time.monotonic() >= beat:
                            self._heartbeat(conn)
                            beat = time.monotonic() + self.heartbeat_interval
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
        if not self._listening.is_set():
            return
        self._listening.clear()
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
