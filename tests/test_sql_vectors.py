"""The JSON vectors in tests/vectors, replayed against the PL/pgSQL state machine.

Each step calls the explicit-time variant of a function (``rc_try_acquire_at``,
``rc_record_at``, ``rc_force_at``, ``rc_reset_at``) or ``rc_configure``, with
``now = 2000-01-01 00:00:00+00 + at_ms``, then checks the function's answer, the stored
row (state and configuration columns) and the NOTIFY payloads of the step by the rules
in tests/_vectors.py. The connection that calls the functions also LISTENs: a session's
own notifications arrive with the reply of the statement that committed them, so each
step's notifications are known without waiting.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests._vectors import (
    check_step,
    expected_transitions,
    stored_config,
    vector_params,
    window_text,
)

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
NAMESPACE = "vectors"
MS = timedelta(milliseconds=1)


def _fraction(text: str | None) -> tuple[int | None, int | None]:
    # Passed unreduced on purpose: rc_configure must normalise "5/10" itself.
    if text is None:
        return None, None
    num, _, den = text.partition("/")
    return int(num), int(den or 1)


def _ms(value: timedelta | None) -> int | float | None:
    if value is None:
        return None
    ms = value / MS
    return int(ms) if ms == int(ms) else ms


def _duration(ms: int | None) -> timedelta | None:
    return None if ms is None else ms * MS


def _configure(conn: psycopg.Connection[Any], key: str, config: dict[str, Any]) -> Any:
    f_num, f_den = _fraction(config["failure_limit"])
    s_num, s_den = _fraction(config["success_limit"])
    l_num, l_den = _fraction(config.get("slow_call_limit"))
    return conn.execute(
        "SELECT * FROM rc_configure(p_key => %s, p_namespace => %s,"
        " p_failure_limit_num => %s, p_failure_limit_den => %s, p_window_size => %s,"
        " p_success_limit_num => %s, p_success_limit_den => %s,"
        " p_cooldown => %s, p_half_open_timeout => %s,"
        " p_window_duration => %s, p_minimum_calls => %s, p_slow_call_duration => %s,"
        " p_slow_call_limit_num => %s, p_slow_call_limit_den => %s,"
        " p_cooldown_factor => %s, p_max_cooldown => %s)",
        (
            key,
            NAMESPACE,
            f_num,
            f_den,
            config["window_size"],
            s_num,
            s_den,
            config["cooldown_ms"] * MS,
            config["half_open_timeout_ms"] * MS,
            _duration(config.get("window_duration_ms")),
            config.get("minimum_calls"),
            _duration(config.get("slow_call_duration_ms")),
            l_num,
            l_den,
            float(config.get("cooldown_factor", 1)),
            _duration(config.get("max_cooldown_ms")),
        ),
    ).fetchone()


def _snapshot(conn: psycopg.Connection[Any], key: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT b.state, b.generation, b.execution_log, b.failure_count, b.open_until,"
        " b.permits, b.successes, b.failures, b.held,"
        " s.window_calls, s.window_failures, s.window_slow"
        " FROM rc_circuit_breakers AS b JOIN rc_circuit_breaker_status AS s"
        " USING (resource_key, namespace) WHERE resource_key = %s AND namespace = %s",
        (key, NAMESPACE),
    ).fetchone()
    assert row is not None, "the vector's breaker has no row"
    state, generation, log, failure_count, open_until, permits, successes, failures = row[:8]
    held, window_calls, window_failures, window_slow = row[8:]
    return {
        "state": state,
        "generation": generation,
        "window": window_text(log),
        "failure_count": failure_count,
        "open_until_ms": _at(open_until),
        "permits": len(permits),
        "permits_ms": [_at(expiry) for expiry in permits],
        "successes": successes,
        "failures": failures,
        "held": held,
        "window_calls": window_calls,
        "window_failures": window_failures,
        "window_slow": window_slow,
    }


def _at(moment: datetime | None) -> int | float | None:
    return None if moment is None else _ms(moment - EPOCH)


def _stored_config(conn: psycopg.Connection[Any], key: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT b.failure_limit_num, b.failure_limit_den, b.window_size, b.success_limit_num,"
        " b.success_limit_den, b.cooldown, b.half_open_timeout, b.window_duration,"
        " s.minimum_calls, b.slow_call_duration, b.slow_call_limit_num, b.slow_call_limit_den,"
        " b.cooldown_factor, b.max_cooldown"
        " FROM rc_circuit_breakers AS b JOIN rc_circuit_breaker_status AS s"
        " USING (resource_key, namespace) WHERE resource_key = %s AND namespace = %s",
        (key, NAMESPACE),
    ).fetchone()
    assert row is not None, "the vector's breaker has no row"
    f_num, f_den, window, s_num, s_den, cooldown, half_open_timeout = row[:7]
    duration, minimum, slow, l_num, l_den, factor, max_cooldown = row[7:]
    return {
        "failure_limit": (f_num, f_den),
        "window_size": window,
        "success_limit": None if s_num is None else (s_num, s_den),
        "cooldown_ms": _ms(cooldown),
        "half_open_timeout_ms": _ms(half_open_timeout),
        "window_duration_ms": _ms(duration),
        "minimum_calls": minimum,
        "slow_call_duration_ms": _ms(slow),
        "slow_call_limit": None if l_num is None else (l_num, l_den),
        "cooldown_factor": factor,
        "max_cooldown_ms": _ms(max_cooldown),
    }


def _transition(payload: str) -> dict[str, Any]:
    """A NOTIFY payload in the vectors' terms, checking it names the vector's breaker."""
    fields = json.loads(payload)
    assert set(fields) == {"namespace", "key", "from", "to", "generation", "open_until"}
    open_until = fields["open_until"]
    return {
        "key": (fields["namespace"], fields["key"]),
        "from": fields["from"],
        "to": fields["to"],
        "generation": fields["generation"],
        "open_until_ms": None if open_until is None else _at(_timestamp(open_until)),
    }


def _timestamp(text: str) -> datetime:
    # PostgreSQL trims trailing zeros of the fraction ("….5+00:00"), which Python 3.10's
    # fromisoformat refuses; six digits are read by every version.
    match = re.fullmatch(r"([^.]+)\.(\d+)(.*)", text)
    if match:
        text = f"{match[1]}.{match[2].ljust(6, '0')}{match[3]}"
    return datetime.fromisoformat(text)


def _step(conn: psycopg.Connection[Any], key: str, step: dict[str, Any]) -> dict[str, Any]:
    """Run one step; returns what the function answered, in the vectors' terms."""
    now = EPOCH + step["at_ms"] * MS
    op = step["op"]
    if op == "acquire":
        permitted, state, generation, retry_after = conn.execute(
            "SELECT * FROM rc_try_acquire_at(p_key => %s, p_namespace => %s, p_now => %s)",
            (key, NAMESPACE, now),
        ).fetchone()  # type: ignore[misc]
        return {
            "permitted": permitted,
            "state": state,
            "generation": generation,
            "retry_after_ms": _ms(retry_after),
        }
    if op == "record":
        row = conn.execute(
            "SELECT * FROM rc_record_at(p_key => %s, p_success => %s, p_namespace => %s,"
            " p_generation => %s, p_now => %s, p_duration => %s)",
            (
                key,
                step["success"],
                NAMESPACE,
                step["generation"],
                now,
                _duration(step.get("duration_ms")),
            ),
        ).fetchone()
    elif op == "release":
        row = conn.execute(
            "SELECT * FROM rc_release_at(p_key => %s, p_namespace => %s, p_generation => %s,"
            " p_now => %s)",
            (key, NAMESPACE, step["generation"], now),
        ).fetchone()
    elif op == "force":
        row = conn.execute(
            "SELECT * FROM rc_force_at(p_key => %s, p_state => %s, p_namespace => %s,"
            " p_now => %s, p_hold => %s)",
            (key, step["state"], NAMESPACE, now, step.get("hold", False)),
        ).fetchone()
    elif op == "reset":
        row = conn.execute(
            "SELECT * FROM rc_reset_at(p_key => %s, p_namespace => %s, p_now => %s)",
            (key, NAMESPACE, now),
        ).fetchone()
    elif op == "configure":
        row = _configure(conn, key, step["config"])
    else:
        raise AssertionError(f"unknown op {op!r}")
    assert row is not None
    return {"state": row[0], "generation": row[1]}


def run_vector(conn: psycopg.Connection[Any], vector: dict[str, Any]) -> None:
    """Replay one vector on the breaker named after it, asserting every step."""
    key = vector["name"]
    # Start from a missing row even on a database that has run this vector before.
    conn.execute(
        "DELETE FROM rc_circuit_breakers WHERE resource_key = %s AND namespace = %s",
        (key, NAMESPACE),
    )
    heard: list[str] = []
    conn.add_notify_handler(lambda notice: heard.append(notice.payload))
    row = conn.execute("SELECT rc_channel(%s)", (NAMESPACE,)).fetchone()
    assert row is not None
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(row[0])))
    declared = vector["config"]
    _configure(conn, key, declared)
    before = _snapshot(conn, key)
    assert heard == [], "configuring announced a transition"
    for index, step in enumerate(vector["steps"]):
        where = f"{key}: step {index} ({step['op']} at {step['at_ms']} ms)"
        answer = _step(conn, key, step)
        if step["op"] == "configure":
            declared = step["config"]
        after = _snapshot(conn, key)
        check_step(where, step, answer, after, _stored_config(conn, key), stored_config(declared))
        announced = [_transition(payload) for payload in heard]
        del heard[:]
        expected = [{"key": (NAMESPACE, key), **t} for t in expected_transitions(step, before)]
        assert announced == expected, f"{where}: notified {announced}"
        before = after


@pytest.mark.parametrize("vector", vector_params())
def test_vector(pg_dsn: str, vector: dict[str, Any]) -> None:
    """The PL/pgSQL functions give every answer, state, configuration and NOTIFY expected."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        run_vector(conn, vector)
