"""What the PostgreSQL store says and how it reads the replies, shared by sync and async.

Nothing here does I/O: the statements, the parsing of reply rows, the client-side
OPEN cache and the outage tracker are plain values and functions; the sync and
async drivers in ``postgres.py`` only move bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import sql

from resilient_circuit._machine import Admission, CircuitState, Config
from resilient_circuit.storage.base import Snapshot

logger = logging.getLogger("resilient_circuit.storage")

STATES = {s.value: s for s in CircuitState}
_US = timedelta(microseconds=1)


def interval_ns(value: timedelta | None) -> int | None:
    return None if value is None else (value // _US) * 1000


@dataclass(frozen=True, slots=True)
class Reply:
    """A state and generation as a function returned them."""

    state: CircuitState
    generation: int


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement the store sends, qualified once with the install schema."""

    acquire: sql.Composed
    record: sql.Composed
    record_many: sql.Composed
    configure: sql.Composed
    force: sql.Composed
    reset: sql.Composed
    status: sql.Composed
    set_state: sql.Composed

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        s = sql.Identifier(schema)

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=s)

        return cls(
            acquire=q(
                "SELECT permitted, state, generation, retry_after FROM {s}.rc_try_acquire(%s, %s)"
            ),
            record=q("SELECT state, generation FROM {s}.rc_record(%s, %s, %s, %s)"),
            record_many=q(
                "SELECT state, generation"
                " FROM {s}.rc_record_many(%s, %s, %s::boolean[], %s::bigint[])"
            ),
            configure=q(
                "SELECT state, generation FROM {s}.rc_configure(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ),
            force=q("SELECT state, generation FROM {s}.rc_force(%s, %s, %s)"),
            reset=q("SELECT state, generation FROM {s}.rc_reset(%s, %s)"),
            status=q(
                "SELECT state, generation, execution_log, failure_count, open_until,"
                " cooldown_remaining, permits, successes, failures, window_size,"
                " half_open_window FROM {s}.rc_status(%s, %s)"
            ),
            set_state=q(
                "INSERT INTO {s}.rc_circuit_breakers AS b"
                " (resource_key, namespace, state, failure_count, open_until, execution_log)"
                " VALUES (%(key)s, %(ns)s, %(state)s, %(fc)s, %(until)s, %(log)s)"
                " ON CONFLICT (resource_key, namespace) DO UPDATE SET state = excluded.state,"
                " failure_count = excluded.failure_count, open_until = excluded.open_until,"
                " execution_log = excluded.execution_log, permits = '{{}}',"
                " generation = b.generation + 1, updated_at = clock_timestamp()"
                " RETURNING state, generation"
            ),
        )


def configure_params(key: str, namespace: str, cfg: Config) -> tuple[Any, ...]:
    s = cfg.success_limit
    return (
        key,
        namespace,
        cfg.failure_limit.numerator,
        cfg.failure_limit.denominator,
        cfg.window_size,
        None if s is None else s.numerator,
        None if s is None else s.denominator,
        timedelta(microseconds=cfg.cooldown_ns // 1000),
        timedelta(microseconds=cfg.half_open_timeout_ns // 1000),
    )


def admission(row: tuple[Any, ...]) -> Admission:
    permitted, state, generation, retry_after = row
    return Admission(permitted, STATES[state], generation, interval_ns(retry_after))


def reply(row: tuple[Any, ...]) -> Reply:
    return Reply(STATES[row[0]], row[1])


def window(text: str | None) -> tuple[bool, ...]:
    """The status view's window ('SSF', oldest first) as booleans."""
    return tuple(c == "S" for c in text or "")


def snapshot(row: tuple[Any, ...] | None, cfg: Config) -> Snapshot:
    if row is None:
        return Snapshot(CircuitState.CLOSED, 0, (), cfg.window_size, 0, None, 0, 0, 0)
    state = STATES[row[0]]
    return Snapshot(
        state=state,
        generation=row[1],
        window=window(row[2]),
        window_capacity=row[10] if state is CircuitState.HALF_OPEN else row[9],
        failure_count=row[3],
        open_remaining=row[5],
        permits=row[6],
        successes=row[7],
        failures=row[8],
    )


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
        "_failed_at",
        "_lock",
        "down_since",
        "max_backoff",
        "min_backoff",
        "retry_at",
        "up_since",
    )

    def __init__(self, describe: str, min_backoff: float = 0.25, max_backoff: float = 5.0) -> None:
        self._describe = describe
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._backoff = min_backoff
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.up_since = float("-inf")  # when the last outage ended
        self.retry_at = 0.0
        self._failed_at = 0.0  # when the last failure that moved the backoff was seen

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

    def failed(self, exc: BaseException, started: float | None = None) -> None:
        """An attempt begun at ``started`` (monotonic seconds) failed."""
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
            self._backoff = self.min_backoff
            self.retry_at = now + self._backoff
        logger.warning(
            "breaker storage %s unavailable, calls proceed without it until it answers: %s",
            self._describe,
            one_line(exc),
        )

    def succeeded(self, started: float | None = None, conclusive: bool = True) -> None:
        """An attempt begun at ``started`` (monotonic seconds) got its answer.

        Only a ``conclusive`` one (a write, for a store that records) ends an outage;
        another lets the next statement try at once instead of waiting its turn.
        """
        if self.down_since is None:
            return
        now = time.monotonic()
        if started is None:
            started = now
        with self._lock:
            down_since = self.down_since
            if down_since is None or started < down_since:
                return  # it began before the outage was known: old news
            if not conclusive:
                if started >= self._failed_at:
                    self.retry_at = 0.0
                return
            self.down_since = None
            self.up_since = now
            self.retry_at = 0.0
        logger.info(
            "breaker storage %s available again after %.1fs", self._describe, now - down_since
        )


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
