"""The breaker table refuses rows that break its rules, whoever writes them.

The table has no CHECK constraint, which PostgreSQL would prepare again for every
UPDATE: the counters an outcome writes are domains with the rule, and the other rules
run in a trigger (rc_circuit_breakers_check) on insert and on each UPDATE that assigns a
column they read, so that an outcome, which assigns none of those columns, does not pay
for them; bucket_calls, whose length alone they read, has a trigger of its own
(rc_circuit_breakers_check_buckets) that runs them when an UPDATE leaves it of another
length than bucket_failures.
These tests pin the three things that keep that safe: each rule refuses a bad row
written directly by the owner, the trigger watches every column its rules read, and
rc_configure refuses a bad value first, with 22023 naming its parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    """An autocommit connection, as the owner, to a database holding the current schema."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("SELECT * FROM rc_configure('k', 'default', 1, 2)")
        yield connection


# (assignments of an UPDATE by the owner, the rule it breaks)
BAD_WRITES = [
    ("state = 'SHUT'", "state"),
    ("permits = ARRAY[now()]", "permits"),
    ("failure_limit_num = 2, failure_limit_den = 4", "failure_limit"),
    ("failure_limit_num = 0", "failure_limit"),
    ("window_size = 10001", "window_size"),
    ("success_limit_num = 1", "success_limit"),
    ("success_limit_num = 1, success_limit_den = 10001", "success_limit"),
    ("cooldown = '-1 second'", "cooldown"),
    ("cooldown = '1 month'", "cooldown"),
    ("half_open_timeout = '0'", "half_open_timeout"),
    ("held = true", "held"),
    ("state = 'DISABLED'", "held"),
    ("bucket_calls = '{1}'", "buckets"),
    ("bucket_head = -1", "buckets"),
    ("window_duration = '1 microsecond'", "window_duration"),
    ("minimum_calls = 3", "minimum_calls"),
    (
        "slow_call_duration = '1 second', slow_call_limit_num = 2, slow_call_limit_den = 1",
        "slow_call",
    ),
    ("cooldown_factor = 101", "cooldown_growth"),
    ("last_cooldown = '-1 second'", "cooldown_growth"),
    ("max_cooldown = '1 year'", "cooldown_growth"),
    ("successes = -1", "counters"),
    ("failure_count = -1", "counters"),
    ("failures = -1", "counters"),
    ("generation = -1", "counters"),
]


@pytest.mark.parametrize(("assignments", "rule"), BAD_WRITES)
def test_an_owner_write_breaking_a_rule_is_refused(conn: Conn, assignments: str, rule: str) -> None:
    before = conn.execute("SELECT * FROM rc_circuit_breakers").fetchall()
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute(f"UPDATE rc_circuit_breakers SET {assignments} WHERE resource_key = 'k'")
    assert caught.value.diag.constraint_name == f"rc_circuit_breakers_{rule}_check"
    assert conn.execute("SELECT * FROM rc_circuit_breakers").fetchall() == before


def test_an_inserted_row_breaking_a_rule_is_refused(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute(
            "INSERT INTO rc_circuit_breakers (resource_key, namespace, window_size)"
            " VALUES ('new', 'default', 0)"
        )
    assert caught.value.diag.constraint_name == "rc_circuit_breakers_window_size_check"
    assert conn.execute("SELECT count(*) FROM rc_circuit_breakers").fetchone() == (1,)


def test_the_trigger_watches_every_column_its_rules_read(conn: Conn) -> None:
    """A row that passed the rules keeps passing them while none of these columns changes."""
    source, watched = conn.execute(
        """
        SELECT p.prosrc, array_agg(a.attname::text ORDER BY a.attname)
        FROM pg_trigger t
        JOIN pg_proc p ON p.oid = t.tgfoid
        JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr)
        WHERE t.tgrelid = 'rc_circuit_breakers'::regclass
          AND t.tgname IN ('rc_circuit_breakers_check', 'rc_circuit_breakers_check_buckets')
        GROUP BY p.prosrc
        """
    ).fetchone() or (None, None)
    assert source is not None
    read = sorted(set(re.findall(r"\bNEW\.(\w+)", source)))
    assert read
    assert watched == read


def test_an_outcome_while_closed_runs_no_rule_and_a_trip_runs_them(conn: Conn) -> None:
    """The point of the trigger: the common outcome assigns none of the watched columns."""
    conn.execute("SET track_functions = 'all'")
    # Counts not yet flushed to the statistics include earlier transactions': the difference.
    runs = "SELECT coalesce(pg_stat_get_xact_function_calls('rc_check_breaker_row'::regproc), 0)"

    def rule_runs(query: str) -> int:
        with conn.transaction():
            before = conn.execute(runs).fetchone()
            conn.execute(query)
            after = conn.execute(runs).fetchone()
        assert before is not None
        assert after is not None
        return int(after[0]) - int(before[0])

    assert rule_runs("SELECT * FROM rc_record('k', true)") == 0
    assert rule_runs("SELECT * FROM rc_try_acquire('k')") == 0
    assert rule_runs("SELECT * FROM rc_record('k', false)") == 1
    state = conn.execute("SELECT state FROM rc_circuit_breakers").fetchone()
    assert state == ("OPEN",)


def test_a_success_in_a_time_windows_newest_bucket_runs_no_rule(conn: Conn) -> None:
    """A success counted in the current bucket of a time window assigns only bucket_calls."""
    conn.execute("SET track_functions = 'all'")
    conn.execute("SELECT * FROM rc_configure('t', 'default', 1, 2, p_window_duration => '1 hour')")
    conn.execute("SELECT * FROM rc_record('t', true)")  # starts the window: ten buckets
    # Counts not yet flushed to the statistics include earlier transactions': the difference.
    runs = "SELECT coalesce(pg_stat_get_xact_function_calls('rc_check_breaker_row'::regproc), 0)"

    def rule_runs(query: str) -> int:
        with conn.transaction():
            before = conn.execute(runs).fetchone()
            conn.execute(query)
            after = conn.execute(runs).fetchone()
        assert before is not None
        assert after is not None
        return int(after[0]) - int(before[0])

    assert rule_runs("SELECT * FROM rc_record('t', true)") == 0
    calls = conn.execute(
        "SELECT bucket_calls, successes FROM rc_circuit_breakers WHERE resource_key = 't'"
    ).fetchone()
    assert calls == ([2] + [0] * 9, 2)


def test_bucket_calls_alone_of_another_length_than_bucket_failures_is_refused(
    conn: Conn,
) -> None:
    """The buckets' lengths are checked when bucket_calls is the only column assigned."""
    conn.execute("SELECT * FROM rc_configure('t', 'default', 1, 2, p_window_duration => '1 hour')")
    conn.execute("SELECT * FROM rc_record('t', false)")
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute("UPDATE rc_circuit_breakers SET bucket_calls = '{}' WHERE resource_key = 't'")
    assert caught.value.diag.constraint_name == "rc_circuit_breakers_buckets_check"
    conn.execute(
        "UPDATE rc_circuit_breakers SET bucket_calls = array_fill(3, ARRAY[10])"
        " WHERE resource_key = 't'"
    )


# (the arguments of rc_configure after key and namespace, the parameter named)
BAD_CONFIGURATIONS = [
    ("p_window_size => 10001", "p_window_size"),
    ("p_cooldown => '1 month'", "p_cooldown"),
    ("p_half_open_timeout => '0'", "p_half_open_timeout"),
    ("p_window_duration => '1 microsecond'", "p_window_duration"),
    ("p_cooldown_factor => 101", "p_cooldown_factor"),
    ("p_slow_call_duration => '-1 second'", "p_slow_call_duration"),
]


@pytest.mark.parametrize(("arguments", "parameter"), BAD_CONFIGURATIONS)
def test_rc_configure_refuses_a_bad_value_before_the_table_does(
    conn: Conn, arguments: str, parameter: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(f"SELECT * FROM rc_configure('k', 'default', {arguments})")
    assert caught.value.sqlstate == "22023"
    assert parameter in str(caught.value)
