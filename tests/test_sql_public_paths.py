"""rc_try_acquire and rc_record answer the common cases themselves; they must agree with
the state machine (rc_try_acquire_at, rc_record_at with the server clock) in every state.

Two breakers configured alike are driven by the same random steps: one through the public
functions, its twin through the explicit-time variants. After each step both replies
and both rows must be the same (retry_after, which follows the clock, within a margin).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]

# The row's columns that both twins must share (the key and the clock's columns excepted).
COMPARED = (
    "state, generation, failure_count, execution_log, slow_log, successes, failures, held,"
    " cardinality(permits) AS permits, open_until IS NULL AS no_open_until, window_start IS NULL"
    " AS no_window_start, bucket_head, bucket_calls, bucket_failures, bucket_slow,"
    " last_cooldown"
)
# (configuration arguments of rc_configure after key and namespace)
CONFIGS = [
    "1, 2, p_cooldown => '0'",
    "1, 2, p_cooldown => '1 hour'",
    "2, 3, 3, 1, 2, p_cooldown => '0'",
    "1, 2, p_cooldown => '0', p_slow_call_duration => '1 second', p_slow_call_limit_num => 1,"
    " p_slow_call_limit_den => 2",
    "1, 2, p_cooldown => '1 hour', p_window_duration => '1 hour', p_minimum_calls => 2",
]
FORCED = ["'OPEN'", "'CLOSED'", "'DISABLED'", "'HALF_OPEN'"]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def _row(conn: Conn, key: str) -> tuple[Any, ...] | None:
    found = conn.execute(
        f"SELECT {COMPARED} FROM rc_circuit_breakers WHERE resource_key = %s", [key]
    ).fetchone()
    return None if found is None else tuple(found)


def _same_reply(public: tuple[Any, ...], machine: tuple[Any, ...]) -> None:
    assert public[:3] == machine[:3]
    if len(public) == 4:
        if machine[3] is None:
            assert public[3] is None
        else:
            assert abs(public[3] - machine[3]) < timedelta(seconds=5)


@pytest.mark.parametrize("config", CONFIGS)
def test_public_functions_decide_as_the_state_machine(conn: Conn, config: str) -> None:
    rng = random.Random(config)
    public, machine = "pub", "twin"
    for key in (public, machine):
        conn.execute(f"SELECT * FROM rc_configure(%s, 'default', {config})", [key])
    for _ in range(120):
        step = rng.random()
        if step < 0.4:
            got = conn.execute("SELECT * FROM rc_try_acquire(%s, 'default')", [public])
            want = conn.execute("SELECT * FROM rc_try_acquire_at(%s, 'default', NULL)", [machine])
        elif step < 0.9:
            success = rng.random() < 0.6
            generation = rng.choice([None, None, "current", "stale"])
            current = conn.execute(
                "SELECT coalesce(max(generation), 0) FROM rc_circuit_breakers"
                " WHERE resource_key = %s",
                [public],
            ).fetchone()
            assert current is not None
            gen = {None: None, "current": current[0], "stale": current[0] - 1}[generation]
            duration = rng.choice([None, timedelta(0), timedelta(seconds=2)])
            got = conn.execute(
                "SELECT * FROM rc_record(%s, %s, 'default', %s, %s)",
                [public, success, gen, duration],
            )
            want = conn.execute(
                "SELECT * FROM rc_record_at(%s, %s, 'default', %s, NULL, %s)",
                [machine, success, gen, duration],
            )
        else:
            state = rng.choice(FORCED)
            hold = rng.random() < 0.3 and state == "'OPEN'"
            for key in (public, machine):
                conn.execute(f"SELECT * FROM rc_force(%s, {state}, 'default', %s)", [key, hold])
            continue
        reply, expected = got.fetchone(), want.fetchone()
        assert reply is not None
        assert expected is not None
        _same_reply(tuple(reply), tuple(expected))
        assert _row(conn, public) == _row(conn, machine)


def test_a_breaker_never_used_is_admitted_without_a_row(conn: Conn) -> None:
    assert conn.execute("SELECT * FROM rc_try_acquire('new')").fetchone() == (
        True,
        "CLOSED",
        0,
        None,
    )
    assert _row(conn, "new") is None


@pytest.mark.parametrize(
    ("key", "namespace", "parameter"),
    [
        ("''", "'default'", "p_key"),
        ("NULL", "'default'", "p_key"),
        ("repeat('k', 256)", "'default'", "p_key"),
        ("'svc'", "''", "p_namespace"),
        ("'svc'", "NULL", "p_namespace"),
        ("'svc'", "repeat('n', 256)", "p_namespace"),
    ],
)
def test_bad_names_are_refused_by_the_public_functions(
    conn: Conn, key: str, namespace: str, parameter: str
) -> None:
    conn.execute("SELECT * FROM rc_record('svc', true)")
    for call in (f"rc_try_acquire({key}, {namespace})", f"rc_record({key}, true, {namespace})"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=parameter):
            conn.execute(f"SELECT * FROM {call}")
