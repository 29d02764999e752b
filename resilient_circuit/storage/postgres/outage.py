"""When the database counts as down: which errors are outages, and the backoff between tries.

Only availability failures are outages (connection lost, admin shutdown, too many
connections, timeouts, read-only, pool exhausted, OS errors); a missing schema, a
missing privilege, a missing database, a refused login, a bug or a caller's bad
argument is not.
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

from resilient_circuit.exceptions import StorageNotUsable
from resilient_circuit.instrumentation import _events

__all__ = (
    "DATABASE_MISSING",
    "LOGIN_REFUSED",
    "Outage",
    "connect_reason",
    "connect_refusal",
    "connection_lost",
    "one_line",
    "unavailable",
)

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


#: What ``connect_refusal`` tells apart: the server answered, and said no for good.
DATABASE_MISSING = "database missing"
LOGIN_REFUSED = "login refused"

_DATABASE_MISSING = re.compile(r'database ".*" does not exist')
_LOGIN_REFUSED = re.compile(
    r"authentication failed|role \".*\" does not exist|not permitted to log in"
    r"|permission denied|no pg_hba\.conf entry|password",
    re.IGNORECASE,
)


def connect_refusal(exc: BaseException) -> str | None:
    """``DATABASE_MISSING`` or ``LOGIN_REFUSED`` when a connection attempt failed because
    the server refused it as configured (a deployment mistake, not an outage), else None.

    libpq gives no SQLSTATE for a failed connection: the server's (English) message is
    all there is. A server whose ``lc_messages`` speaks another language says these in
    its own words, which are not recognised: such a failure stays an outage. "Too many
    connections", "the database system is starting up" or "shutting down" are outages.
    """
    if not isinstance(exc, psycopg.OperationalError) or exc.sqlstate:
        return None
    if _DATABASE_MISSING.search(connect_reason(exc)):
        return DATABASE_MISSING
    if _LOGIN_REFUSED.search(str(exc)):
        return LOGIN_REFUSED
    return None


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

    A connection the server refused as configured (no such database, login refused) is
    down the same way, with the same backoff and one probe at a time, but ``refused``
    holds what calls raise meanwhile: one ERROR when it starts and one INFO when the
    database lets the store in, and no outage events (it is no outage, as a missing
    schema is none). Any answer ends it: the connection was the problem.
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
        "refused",
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
        #: While down because the server refused the store's connections as configured:
        #: what every call raises until a probe connects.
        self.refused: StorageNotUsable | None = None
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
        self,
        exc: BaseException,
        started: float | None = None,
        reason: str | None = None,
        refused: StorageNotUsable | None = None,
    ) -> None:
        """An attempt begun at ``started`` (monotonic seconds) failed, for ``reason`` (one
        line; ``exc`` as ``one_line`` tells it, if not given); ``refused``: what calls
        raise meanwhile, when the server refused the connection as configured."""
        now = time.monotonic()
        if started is None:
            started = now
        with self._lock:
            down_since = self.down_since
            if down_since is not None:
                if started < self._failed_at:
                    return  # begun before the last failure was known: old news
                # A probe, sent after the last failure was known: back off further.
                self._backoff = min(self._backoff * 2, self.max_backoff)
                self._failed_at = now
                self.retry_at = now + self._backoff
                was, self.refused = self.refused, refused
                if (was is None) == (refused is None):
                    return  # the same kind of failure as before: nothing new to tell
                if refused is None:
                    self.down_since = now  # an outage from now on, no more a refusal
            else:
                if started < self.up_since:
                    return  # it began before the database last answered: old news
                self.down_since = self._failed_at = now
                self.watching = True
                self._backoff = self.min_backoff
                self.retry_at = now + self._backoff
                self.refused = refused
        if refused is not None:
            logger.error(
                "%s (not an outage: protected calls raise %s until it is fixed)",
                refused,
                type(refused).__name__,
            )
            if down_since is not None:
                # It was an outage until now: as far as the hooks are told, that one ended.
                _events.outage_ended(self._describe, now - down_since)
            return
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
            refused = self.refused
            first = not self.answered
            if down_since is None:
                # The first answer ever (or one racing it): up from now on, until a failure.
                self.answered, self.watching = True, False
            elif started < down_since:
                return  # it began before the outage was known: old news
            elif not conclusive and refused is None:
                if started >= self._failed_at:
                    self.retry_at = 0.0
                return
            else:
                self.down_since = None
                self.refused = None
                self.answered, self.watching = True, False
                self.up_since = now
                self.retry_at = 0.0
        if refused is not None and down_since is not None:
            logger.info(
                "breaker storage %s usable again after %.1fs: it accepts the connection",
                self._describe,
                now - down_since,
            )
        if down_since is None or refused is not None:
            if first:
                _events.storage_available(self._describe)
            return
        logger.info(
            "breaker storage %s available again after %.1fs", self._describe, now - down_since
        )
        _events.outage_ended(self._describe, now - down_since)
