"""Every statement the store sends, by name, and how their reply rows are read.

Statements take named parameters (``%(key)s``), named after the SQL functions' own
(``p_key`` is ``key``). They list the columns they read, because the rows are read
by position and a function may return more columns later. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Any

from psycopg import sql

from resilient_circuit._machine import (
    DEFAULT_TIME_MINIMUM_CALLS,
    Admission,
    CircuitState,
    Config,
)
from resilient_circuit.storage.base import Snapshot
from resilient_circuit.storage.postgres.prepared import Prepared

__all__ = (
    "Reply",
    "Statements",
    "admission",
    "config_row",
    "configure_params",
    "describe_stored",
    "reply",
    "snapshot",
    "window",
)

STATES = {s.value: s for s in CircuitState}
_US = timedelta(microseconds=1)


def interval_ns(value: timedelta | None) -> int | None:
    return None if value is None else (value // _US) * 1000


@dataclass(frozen=True, slots=True)
class Reply:
    """A state and generation as a function returned them."""

    state: CircuitState
    generation: int


# The statements, by name, with ``{s}`` standing for the install schema.
_STATEMENTS = {
    "acquire": (
        "SELECT permitted, state, generation, retry_after"
        " FROM {s}.rc_try_acquire(%(key)s, %(namespace)s)"
    ),
    "record": (
        "SELECT state, generation FROM {s}.rc_record("
        "%(key)s, %(success)s, %(namespace)s, %(generation)s, %(duration)s)"
    ),
    "record_many": (
        "SELECT state, generation FROM {s}.rc_record_many(%(key)s, %(namespace)s,"
        " %(successes)s::boolean[], %(generations)s::bigint[], %(durations)s::interval[])"
    ),
    # The arrays come as literals (see batch.runs): psycopg adapts lists element by element.
    "record_runs": (
        "SELECT state, generation FROM {s}.rc_record_runs(%(key)s, %(namespace)s,"
        " %(counts)s::integer[], %(successes)s::boolean[], %(generations)s::bigint[])"
    ),
    "release": (
        "SELECT state, generation FROM {s}.rc_release(%(key)s, %(namespace)s, %(generation)s)"
    ),
    "configure": (
        "SELECT state, generation FROM {s}.rc_configure(%(key)s, %(namespace)s,"
        " %(failure_limit_num)s, %(failure_limit_den)s, %(window_size)s,"
        " %(success_limit_num)s, %(success_limit_den)s, %(cooldown)s, %(half_open_timeout)s,"
        " %(window_duration)s, %(minimum_calls)s, %(slow_call_duration)s,"
        " %(slow_call_limit_num)s, %(slow_call_limit_den)s, %(cooldown_factor)s,"
        " %(max_cooldown)s, %(restore)s)"
    ),
    "force": (
        "SELECT state, generation FROM {s}.rc_force(%(key)s, %(state)s, %(namespace)s, %(hold)s)"
    ),
    "reset": "SELECT state, generation FROM {s}.rc_reset(%(key)s, %(namespace)s)",
    "status": (
        "SELECT state, generation, execution_log, failure_count, open_until,"
        " cooldown_remaining, permits, successes, failures, window_size,"
        " half_open_window, window_duration, window_calls, window_failures, minimum_calls"
        " FROM {s}.rc_status(%(key)s, %(namespace)s)"
    ),
    # What the row holds before this process configures it, to say so when it differs.
    "stored_config": (
        "SELECT failure_limit, window_size, success_limit, cooldown, half_open_timeout,"
        " window_duration, minimum_calls, slow_call_duration, slow_call_limit,"
        " cooldown_factor, max_cooldown"
        " FROM {s}.rc_status(%(key)s, %(namespace)s)"
    ),
    # 0.4.5's set_state: a transition like any other, announced, within the role's grants.
    "set_state": (
        "SELECT state, generation FROM {s}.rc_set_state(%(key)s, %(state)s,"
        " %(failure_count)s, %(open_until)s, %(execution_log)s::boolean[], %(namespace)s)"
    ),
    "forget": "SELECT {s}.rc_forget(%(key)s, %(namespace)s)",
    "gc": "SELECT {s}.rc_gc(%(idle)s)",
    # Several breakers at once, by position: the OPEN verdicts held while LISTEN was not
    # up are read again, in one round trip, once it is.
    "reread": (
        "SELECT k.i, s.state, s.generation, s.cooldown_remaining"
        " FROM unnest(%(keys)s::text[], %(namespaces)s::text[]) WITH ORDINALITY"
        " AS k(key, namespace, i)"
        " CROSS JOIN LATERAL {s}.rc_status(k.key, k.namespace) AS s"
    ),
}


# The statements of every strict call, which the store's own connections prepare (see
# prepared.py), and the SQL type of each of their parameters: there, ``_STATEMENTS``'
# text with PostgreSQL's own placeholders, each cast to the function's parameter type.
_PARAMETER_TYPES = {
    "key": "text",
    "namespace": "text",
    "success": "boolean",
    "generation": "bigint",
    "duration": "interval",
}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _prepared(name: str, schema: sql.Identifier) -> Prepared:
    """``_STATEMENTS[name]`` as the store's connections prepare it."""
    params: list[str] = []

    def numbered(found: re.Match[str]) -> str:
        params.append(found.group(1))
        return f"${len(params)}::{_PARAMETER_TYPES[found.group(1)]}"

    text = _PLACEHOLDER.sub(numbered, _STATEMENTS[name])
    return Prepared(f"rc_{name}".encode(), sql.SQL(text).format(s=schema), tuple(params))


@dataclass(frozen=True, slots=True)
class Statements:
    """The named statements, qualified once with the install schema."""

    acquire: sql.Composed
    record: sql.Composed
    record_many: sql.Composed
    record_runs: sql.Composed
    release: sql.Composed
    configure: sql.Composed
    force: sql.Composed
    reset: sql.Composed
    status: sql.Composed
    stored_config: sql.Composed
    set_state: sql.Composed
    forget: sql.Composed
    gc: sql.Composed
    reread: sql.Composed
    acquire_prepared: Prepared
    record_prepared: Prepared

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        s = sql.Identifier(schema)

        statements = {name: sql.SQL(text).format(s=s) for name, text in _STATEMENTS.items()}
        return cls(
            **statements,
            acquire_prepared=_prepared("acquire", s),
            record_prepared=_prepared("record", s),
        )

    def prepared(self, statement: object, conn: Any, configured: bool) -> Prepared | None:
        """How a round trip runs ``statement`` on ``conn``: its prepared form (see
        prepared.py), or None for psycopg's path.

        Prepared only for a breaker whose configuration is stored (storing it goes
        through psycopg), on a connection of the store's own pools marked direct when
        the pool configured it (``Prepares.rc_direct``), and for the two statements of
        a strict call. The one rule for threads and coroutines alike.
        """
        if not configured:
            return None
        try:
            if not conn.rc_direct:
                return None
        except AttributeError:  # a connection the application lends
            return None
        if statement is self.acquire:
            return self.acquire_prepared
        if statement is self.record:
            return self.record_prepared
        return None

    def reads_only(self, statement: object) -> bool:
        """Whether ``statement`` only reads, which a read-only or locked database answers."""
        return statement is self.acquire or statement is self.status

    def function(self, statement: object) -> str:
        """The name of the SQL function ``statement`` calls."""
        for name, function in _FUNCTIONS.items():
            if getattr(self, name) is statement:
                return function
        raise ValueError(f"unknown statement: {statement!r}")


# The function each statement calls.
_FUNCTIONS = {
    "acquire": "rc_try_acquire",
    "record": "rc_record",
    "record_many": "rc_record_many",
    "record_runs": "rc_record_runs",
    "configure": "rc_configure",
    "force": "rc_force",
    "reset": "rc_reset",
    "status": "rc_status",
    "stored_config": "rc_status",
    "set_state": "rc_set_state",
    "forget": "rc_forget",
    "gc": "rc_gc",
    "reread": "rc_status",
}


def duration(ns: int | None) -> timedelta | None:
    """Nanoseconds as the interval PostgreSQL keeps (whole microseconds)."""
    return None if ns is None else timedelta(microseconds=ns // 1000)


def configure_params(key: str, namespace: str, cfg: Config) -> dict[str, Any]:
    s = cfg.success_limit
    slow = cfg.slow_call_limit
    return {
        "key": key,
        "namespace": namespace,
        "failure_limit_num": cfg.failure_limit.numerator,
        "failure_limit_den": cfg.failure_limit.denominator,
        "window_size": cfg.window_size,
        "success_limit_num": None if s is None else s.numerator,
        "success_limit_den": None if s is None else s.denominator,
        "cooldown": timedelta(microseconds=cfg.cooldown_ns // 1000),
        "half_open_timeout": timedelta(microseconds=cfg.half_open_timeout_ns // 1000),
        "window_duration": duration(cfg.window_duration_ns),
        "minimum_calls": cfg.minimum_calls,
        "slow_call_duration": duration(cfg.slow_call_duration_ns),
        "slow_call_limit_num": None if slow is None else slow.numerator,
        "slow_call_limit_den": None if slow is None else slow.denominator,
        "cooldown_factor": cfg.cooldown_factor,
        "max_cooldown": duration(cfg.max_cooldown_ns),
        "restore": False,
    }


# Every option rc_configure stores, in the order the ``stored_config`` statement reads them.
CONFIG_FIELDS = (
    "failure_limit",
    "window_size",
    "success_limit",
    "cooldown",
    "half_open_timeout",
    "window_duration",
    "minimum_calls",
    "slow_call_duration",
    "slow_call_limit",
    "cooldown_factor",
    "max_cooldown",
)


def _fraction(value: Fraction | None) -> str | None:
    return None if value is None else f"{value.numerator}/{value.denominator}"


def config_row(cfg: Config) -> tuple[Any, ...]:
    """A configuration as the ``stored_config`` statement reads one.

    ``minimum_calls`` is the resolved one on both sides: the status view shows the
    default a row without one uses, and ``Config`` resolves it the same way.
    """
    return (
        _fraction(cfg.failure_limit),
        cfg.window_size,
        _fraction(cfg.success_limit),
        timedelta(microseconds=cfg.cooldown_ns // 1000),
        timedelta(microseconds=cfg.half_open_timeout_ns // 1000),
        duration(cfg.window_duration_ns),
        cfg.minimum_calls,
        duration(cfg.slow_call_duration_ns),
        _fraction(cfg.slow_call_limit),
        float(cfg.cooldown_factor),
        duration(cfg.max_cooldown_ns),
    )


def differing_fields(stored: tuple[Any, ...], cfg: Config) -> list[str]:
    """The names of the options whose stored value is not ``cfg``'s (none: the same)."""
    declared = config_row(cfg)
    names = [
        name
        for name, was, wanted in zip(CONFIG_FIELDS, tuple(stored), declared, strict=True)
        if was != wanted
    ]
    if "minimum_calls" in names and _default_minimum(stored) and _default_minimum(declared):
        names.remove("minimum_calls")  # neither side chose it: it follows the window
    return names


def _default_minimum(row: tuple[Any, ...]) -> bool:
    """Whether a configuration's minimum_calls is its window's default, not a choice."""
    values = dict(zip(CONFIG_FIELDS, row, strict=True))
    if values["window_duration"] is None:
        return bool(values["minimum_calls"] == values["window_size"])
    return bool(values["minimum_calls"] == DEFAULT_TIME_MINIMUM_CALLS)


def describe_stored(row: tuple[Any, ...]) -> str:
    """A ``stored_config`` row in the words of ``Config.describe``."""
    values = dict(zip(CONFIG_FIELDS, row, strict=True))
    words = [
        f"failure_limit={values['failure_limit']}",
        f"window_size={values['window_size']}",
        f"success_limit={values['success_limit'] or 'unset'}",
        f"cooldown={_seconds(values['cooldown'])}",
        f"half_open_timeout={_seconds(values['half_open_timeout'])}",
    ]
    # The options beyond 0.4.5's, when set, as Config.describe shows them.
    if values["window_duration"] is not None:
        words.append(f"window_duration={_seconds(values['window_duration'])}")
        words.append(f"minimum_calls={values['minimum_calls']}")
    elif values["minimum_calls"] != values["window_size"]:
        words.append(f"minimum_calls={values['minimum_calls']}")
    if values["slow_call_duration"] is not None:
        words.append(f"slow_call_duration={_seconds(values['slow_call_duration'])}")
        words.append(f"slow_call_limit={values['slow_call_limit']}")
    if values["cooldown_factor"] != 1:
        words.append(f"cooldown_factor={values['cooldown_factor']:g}")
    if values["max_cooldown"] is not None:
        words.append(f"max_cooldown={_seconds(values['max_cooldown'])}")
    return ", ".join(words)


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


def open_remaining(row: tuple[Any, ...] | None, generation: int) -> int | None:
    """A ``reread`` row's remaining cooldown (ns) if it is still OPEN in ``generation``."""
    if row is None or row[0] != "OPEN" or row[1] != generation:
        return None
    return interval_ns(row[2]) or None


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
    outcomes = window(row[2])
    capacity = row[10] if state is CircuitState.HALF_OPEN else row[9]
    if row[11] is not None and not outcomes and row[12]:
        # A time window keeps counts, not an order: its successes, then its failures.
        calls, failed = row[12], row[13]
        outcomes = (True,) * (calls - failed) + (False,) * failed
        capacity = max(row[14], calls)
    return Snapshot(
        state=state,
        generation=row[1],
        window=outcomes,
        window_capacity=capacity,
        failure_count=row[3],
        open_remaining=row[5],
        permits=row[6],
        successes=row[7],
        failures=row[8],
    )
