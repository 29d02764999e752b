"""When the database counts as down: which errors are outages, and the backoff between tries.

Only availability failures are outages (connection lost, admin shutdown, too many
connections, timeouts, read-only, pool exhausted, OS errors); a missing schema, a
missing privilege, a bug or a caller's bad argument is not.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from resilient_circuit.instrumentation import _events

__all__ = ("Outage", "connect_reason", "connection_lost", "one_line", "unavailable")

logger = logging.getLogger("resilient_circuit.storage")

# SQLSTATEs (whole classes, or single codes) that mean "the database could not answer
# now": connection exceptions, insufficient resources (too many connections, disk
# full), admin/crash shutdown and statement timeouts (57), system errors (58), a lock
# timeout, and a read-only server. Anything else (a missing function, a privilege,
# a deadlock, a bug) is not an outage: switching every breaker of the store off for
# it would hide a deployment mistake behind "calls proceed without it".
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_UNAVAILABLE_CODES = frozenset({"55P03", "25006"})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store could not answer (an outage, not a bug)."""
    if isinstance(exc, PoolTimeout | OSError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    sqlstate = exc.sqlstate
    if not sqlstate:
        # No server reply at all: libpq lost or never had the connection.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return sqlstate[:2] in _UNAVAILABLE_CLASSES or sqlstate in _UNAVAILABLE_CODES


def connection_lost(exc: BaseException) -> bool:
    """A dead connection: the others pooled before it (a restart, a failover) may be too."""
    if isinstance(exc, PoolTimeout) or not isinstance(exc, psycopg.OperationalError):
        return isinstance(exc, psycopg.InterfaceError)
    sqlstate = exc.sqlstate or ""
    return not sqlstate or sqlstate.startswith(("08", "57P"))


def one_line(exc: BaseException) -> str:
    """An exception as one log-friendly line: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# What libpq puts before the server's words (or its own) in a failed connection's
# message: the address is known to whoever reads it, the server's reason is not.
_CONNECT_PREFIX = re.compile(
    r"^(?:connection (?:failed|is bad):\s*)?"
    r'(?:connection to server (?:at|on socket) "[^"]*"(?: \([^)]*\))?(?:, port \d+)? failed:\s*)?'
    r"(?:FATAL:\s*)?"
)


def connect_reason(exc: BaseException) -> str:
    """Why a connection attempt failed, in one line: the server's reason (``database "x"
    does not exist``) or libpq's (``Connection refused``), without the address before it.

    libpq gives no SQLSTATE for a failed connection: its message is all there is. An
    error raised after connecting (a session set-up statement) is told as ``one_line``.
    """
    if not isinstance(exc, psycopg.OperationalError) or exc.sqlstate:
        return one_line(exc)
    text = _CONNECT_PREFIX.sub("", str(exc).strip())
    lines = text.splitlines()
    return lines[0].strip() if lines and lines[0].strip() else type(exc).__name__


class Attempts:
    """The connection attempts of one pool under way, and how long the oldest has waited.

    A server that takes the TCP connection and then says nothing (a hung or overloaded
    host, a half-open firewall) fails no attempt before libpq's connect_timeout, which
    is longer than a caller waits for the pool: until then this is all there is to tell.
    ``lock``: a thread lock for a pool whose workers are threads, a no-op context for
    one that runs in a single event loop.
    """

    __slots__ = ("_lock", "_started")

    def __init__(self, lock: AbstractContextManager[Any]) -> None:
        self._lock = lock
        self._started: dict[object, float] = {}

    def begin(self) -> object:
        token = object()
        with self._lock:
            self._started[token] = time.monotonic()
        return token

    def end(self, token: object) -> None:
        with self._lock:
            self._started.pop(token, None)

    def waited(self) -> float | None:
        """Seconds the oldest attempt under way has waited, or None if none is."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return None if oldest is None else time.monotonic() - oldest


class Outage:
    """Whether the database is known to be down, and when to try it again.

    While down, calls skip the database until ``retry_at`` instead of each waiting
    for a connect timeout; then one call probes it while the others keep skipping,
    and each failed probe doubles the wait up to ``max_backoff``. One WARNING when an
    outage starts and one INFO when it ends, never a line per call, however many
    threads and tasks race: an attempt begun before the outage was known (or before
    the database last answered) is old news and changes nothing. A read answering
    is not enough to end an outage of a store that records (a read-only or locked
    database still answers reads): that takes a write.
    """

    __slots__ = (
        "_backoff",
        "_describe",
        "_effect",
        "_failed_at",
        "_lock",
        "answered",
        "down_since",
        "max_backoff",
        "min_backoff",
        "retry_at",
        "up_since",
        "watching",
    )

    def __init__(
        self,
        describe: str,
        effect: Callable[[], str] = lambda: "calls proceed without it",
        min_backoff: float = 0.25,
        max_backoff: float = 5.0,
    ) -> None:
        self._describe = describe
        self._effect = effect  # what calls do meanwhile, for the WARNING
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._backoff = min_backoff
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.up_since = float("-inf")  # when the last outage ended
        self.retry_at = 0.0
        self._failed_at = 0.0  # when the last failure that moved the backoff was seen
        self.answered = False  # has the database ever answered (hooks were told so)?
        # What a round trip checks before calling succeeded(): one attribute, true
        # while down or before the first answer, the only times an answer is news.
        self.watching = True

    def skip(self, probe_for: float = 0.0) -> bool:
        """True while the database is known down and this call should not try it.

        When a try is due the first caller gets False and probes; the others keep
        skipping for up to ``probe_for`` seconds while it finds out.
        """
        if self.down_since is None:
            return False
        now = time.monotonic()
        if now < self.retry_at:
            return True
        with self._lock:
            if self.down_since is None:
                return False
            if now < self.retry_at:
                return True
            self.retry_at = now + probe_for
        return False

    def failed(
        self, exc: BaseException, started: float | None = None, reason: str | None = None
    ) -> None:
        """An attempt begun at ``started`` (monotonic seconds) failed, for ``reason`` (one
        line; ``exc`` as ``one_line`` tells it, if not given)."""
        now = time.monotonic()
        if started is None:
            started = now
        with self._lock:
            if self.down_since is not None:
                if started >= self._failed_at:
                    # A probe, sent after the last failure was known: back off further.
                    self._backoff = min(self._backoff * 2, self.max_backoff)
                    self._failed_at = now
                    self.retry_at = now + self._backoff
                return
            if started < self.up_since:
                return  # it began before the database last answered: old news
            self.down_since = self._failed_at = now
            self.watching = True
            self._backoff = self.min_backoff
            self.retry_at = now + self._backoff
        if reason is None:
            reason = one_line(exc)
        logger.warning(
            "breaker storage %s unavailable, %s until it answers: %s",
            self._describe,
            self._effect(),
            reason,
        )
        _events.outage_started(self._describe, reason)

    def succeeded(self, started: float | None = None, conclusive: bool = True) -> None:
        """An attempt begun at ``started`` (monotonic seconds) got its answer.

        Only a ``conclusive`` one (a write, for a store that records) ends an outage;
        another lets the next statement try at once instead of waiting its turn.
        """
        if not self.watching:
            return
        now = time.monotonic()
        if started is None:
            started = now
        with self._lock:
            down_since = self.down_since
            if down_since is None:
                # The first answer ever (or one racing it): up from now on, until a failure.
                first, self.answered, self.watching = not self.answered, True, False
            elif started < down_since:
                return  # it began before the outage was known: old news
            elif not conclusive:
                if started >= self._failed_at:
                    self.retry_at = 0.0
                return
            else:
                self.down_since = None
                self.answered, self.watching = True, False
                self.up_since = now
                self.retry_at = 0.0
        if down_since is None:
            if first:
                _events.storage_available(self._describe)
            return
        logger.info(
            "breaker storage %s available again after %.1fs", self._describe, now - down_since
        )
        _events.outage_ended(self._describe, now - down_since)
