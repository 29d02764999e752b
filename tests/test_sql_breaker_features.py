"""The SQL side of time windows, minimum calls, slow calls, growing cooldowns, holds and
releases as a plain SQL caller sees it: validation, durations, the server clock.

The rules themselves are pinned by the shared vectors (tests/vectors/*.json) on both
implementations; these tests cover what the vectors cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh database holding the current schema."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def _row(conn: Conn, query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def _table(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM rc_circuit_breakers ORDER BY resource_key").fetchall()


BAD_CALLS = [
    ("window_duration_zero", "rc_configure('svc', p_window_duration => '0')", "p_window_duration"),
    (
        "window_duration_months",
        "rc_configure('svc', p_window_duration => '1 month')",
        "p_window_duration",
    ),
    (
        "window_duration_too_short",
        "rc_configure('svc', p_window_duration => '9 microseconds')",
        "p_window_duration",
    ),
    ("minimum_calls_zero", "rc_configure('svc', p_minimum_calls => 0)", "p_minimum_calls"),
    (
        "minimum_calls_above_window",
        "rc_configure('svc', 'default', 1, 4, p_minimum_calls => 5)",
        "p_minimum_calls",
    ),
    (
        "slow_limit_without_duration",
        "rc_configure('svc', p_slow_call_limit_num => 1, p_slow_call_limit_den => 2)",
        "p_slow_call_duration",
    ),
    (
        "slow_limit_above_one",
        "rc_configure('svc', p_slow_call_duration => '1 second', p_slow_call_limit_num => 3,"
        " p_slow_call_limit_den => 2)",
        "p_slow_call_limit_num",
    ),
    (
        "slow_duration_negative",
        "rc_configure('svc', p_slow_call_duration => '-1 second')",
        "p_slow_call_duration",
    ),
    ("factor_below_one", "rc_configure('svc', p_cooldown_factor => 0.5)", "p_cooldown_factor"),
    ("factor_nan", "rc_configure('svc', p_cooldown_factor => 'NaN')", "p_cooldown_factor"),
    ("factor_null", "rc_configure('svc', p_cooldown_factor => NULL)", "p_cooldown_factor"),
    (
        "max_cooldown_below_cooldown",
        "rc_configure('svc', p_cooldown => '1 minute', p_max_cooldown => '1 second')",
        "p_max_cooldown",
    ),
    ("hold_closed", "rc_force('svc', 'CLOSED', 'default', true)", "p_hold"),
    ("hold_null", "rc_force('svc', 'OPEN', 'default', NULL)", "p_hold"),
    (
        "durations_mismatch",
        "rc_record_many('svc', 'default', ARRAY[true, false], NULL, ARRAY['1 second']::interval[])",
        "p_durations",
    ),
    (
        "duration_negative",
        "rc_record('svc', true, 'default', NULL, '-1 second')",
        "p_duration",
    ),
    ("release_bad_key", "rc_release('', 'default')", "p_key"),
]


@pytest.mark.parametrize(("call", "fragment"), [pytest.param(c, f, id=i) for i, c, f in BAD_CALLS])
def test_bad_new_argument_is_refused_and_changes_nothing(
    conn: Conn, call: str, fragment: str
) -> None:
    """Each new parameter refuses bad values with 22023 naming it; the row is untouched."""
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 1, 2, p_cooldown => '1 hour')")
    conn.execute("SELECT * FROM rc_record('svc', true)")
    before = _table(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(f"SELECT * FROM {call}")
    assert fragment in str(caught.value)
    assert _table(conn) == before


@pytest.mark.parametrize("success", [True, False])
@pytest.mark.parametrize("duration", ["-1 second", "1 month", "1 year 2 seconds"])
def test_rc_record_names_its_own_parameter_for_a_bad_duration(
    conn: Conn, success: bool, duration: str
) -> None:
    """rc_record's error names p_duration, not p_durations of the batch it may delegate to."""
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 1, 2)")
    before = _table(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(
            "SELECT * FROM rc_record('svc', %s, 'default', NULL, %s::interval)", (success, duration)
        )
    message = str(caught.value)
    assert "p_duration " in message
    assert "p_durations" not in message
    assert _table(conn) == before


def test_calls_written_for_the_previous_version_still_work(conn: Conn) -> None:
    """rc_record, rc_force and rc_configure keep their old positional forms."""
    assert _row(conn, "SELECT * FROM rc_configure('svc', 'default', 1, 2)") == ("CLOSED", 0)
    assert _row(conn, "SELECT * FROM rc_record('svc', true)") == ("CLOSED", 0)
    assert _row(conn, "SELECT * FROM rc_record('svc', false, 'default', 0)") == ("OPEN", 1)
    assert _row(conn, "SELECT * FROM rc_force('svc', 'CLOSED')") == ("CLOSED", 2)
    assert _row(conn, "SELECT * FROM rc_record_many('svc', 'default', ARRAY[true])")[0] == "CLOSED"


def test_a_sql_caller_reports_a_slow_call_by_its_duration(conn: Conn) -> None:
    """A duration passed to rc_record over slow_call_duration counts as slow and trips it."""
    conn.execute(
        "SELECT * FROM rc_configure('svc', 'default', 1, 1, 2,"
        " p_slow_call_duration => '1 second', p_slow_call_limit_num => 1,"
        " p_slow_call_limit_den => 2)"
    )
    assert _row(conn, "SELECT state FROM rc_record('svc', true, p_duration => '0.5 s')") == (
        "CLOSED",
    )
    assert _row(conn, "SELECT state FROM rc_record('svc', true, p_duration => '1.5 s')") == (
        "OPEN",
    )
    status = _row(conn, "SELECT window_calls, window_slow, slow_call_limit FROM rc_status('svc')")
    assert status == (2, 1, "1/2")


def test_disabled_and_held_open_from_sql(conn: Conn) -> None:
    """DISABLED admits and never trips; a held OPEN rejects for a cooldown (>= 1 s) with no
    half-open; rc_reset releases it."""
    conn.execute("SELECT * FROM rc_configure('svc')")  # rc_force changes existing breakers
    conn.execute("SELECT * FROM rc_force('svc', 'disabled')")
    for _ in range(3):
        conn.execute("SELECT * FROM rc_record('svc', false)")
    assert _row(conn, "SELECT permitted, state FROM rc_try_acquire('svc')") == (True, "DISABLED")
    conn.execute("SELECT * FROM rc_force('svc', 'OPEN', p_hold => true)")
    permitted, state, _, retry_after = _row(conn, "SELECT * FROM rc_try_acquire('svc')")
    assert (permitted, state, retry_after) == (False, "OPEN", timedelta(seconds=1))
    assert _row(conn, "SELECT held, cooldown_remaining FROM rc_status('svc')") == (True, None)
    conn.execute("SELECT * FROM rc_reset('svc')")
    assert _row(conn, "SELECT permitted, state FROM rc_try_acquire('svc')") == (True, "CLOSED")
    assert _row(conn, "SELECT held FROM rc_status('svc')") == (False,)


def test_release_gives_back_a_trial_permit(conn: Conn) -> None:
    """rc_release with the admission's generation frees its permit; nothing is counted."""
    conn.execute("SELECT * FROM rc_record('svc', false)")
    permitted, state, generation, _ = _row(conn, "SELECT * FROM rc_try_acquire('svc')")
    assert (permitted, state) == (True, "HALF_OPEN")
    assert _row(conn, "SELECT permitted FROM rc_try_acquire('svc')") == (False,)
    assert _row(conn, "SELECT * FROM rc_release('svc', 'default', %s)", (generation,)) == (
        "HALF_OPEN",
        generation,
    )
    assert _row(conn, "SELECT permitted FROM rc_try_acquire('svc')") == (True,)
    assert _row(conn, "SELECT successes, failures FROM rc_status('svc')") == (0, 1)


def test_time_window_status_sums_its_buckets(conn: Conn) -> None:
    """A time-window breaker's status shows its calls and failures summed over its buckets
    and keeps a bounded row whatever the number of calls."""
    conn.execute(
        "SELECT * FROM rc_configure('svc', 'default', 1, 1, p_window_duration => '1 minute',"
        " p_minimum_calls => 1000)"
    )
    conn.execute(
        "SELECT * FROM rc_record_many('svc', 'default',"
        " array_fill(true, ARRAY[500]) || array_fill(false, ARRAY[100]))"
    )
    status = _row(
        conn, "SELECT state, window_calls, window_failures, minimum_calls FROM rc_status('svc')"
    )
    assert status == ("CLOSED", 600, 100, 1000)
    sizes = _row(
        conn,
        "SELECT cardinality(bucket_calls), cardinality(execution_log) FROM rc_circuit_breakers",
    )
    assert sizes == (10, 0)


def test_cli_force_hold_and_reset(conn: Conn, pg_dsn: str) -> None:
    """`force KEY OPEN --hold` holds the shared breaker OPEN; `reset KEY` releases it."""
    from click.testing import CliRunner

    from resilient_circuit.cli import main

    # The CLI refuses keys that have no breaker (a typo must not create one).
    _row(conn, "SELECT state FROM rc_record('svc', true)")
    held = CliRunner().invoke(main, ["force", "svc", "open", "--hold", "--dsn", pg_dsn])
    assert held.exit_code == 0, held.output
    assert "svc: OPEN (held)" in held.output
    assert _row(conn, "SELECT state, held FROM rc_status('svc')") == ("OPEN", True)
    refused = CliRunner().invoke(main, ["force", "svc", "CLOSED", "--hold", "--dsn", pg_dsn])
    assert refused.exit_code == 2
    assert "--hold applies to OPEN and DISABLED only" in refused.output
    released = CliRunner().invoke(main, ["reset", "svc", "--dsn", pg_dsn])
    assert released.exit_code == 0, released.output
    assert _row(conn, "SELECT state, held FROM rc_status('svc')") == ("CLOSED", False)


def test_upgrade_keeps_an_app_role_able_to_record_force_and_release(
    pg_empty_dsn: str, pg_role: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application role granted before migration 0005 may call rc_record, rc_force and
    rc_configure in their new forms, and rc_release, once the install is upgraded."""
    from psycopg import sql

    from resilient_circuit import _installer
    from resilient_circuit.cli.connect import connect

    seed, *later = _installer.load_migrations()
    before = [seed, *(m for m in later if m.version < 5)]
    role = pg_role()
    # Installed as by a package that knew the migrations before 0005: 0.4.5's table, then
    # the installer adopting it and applying the rest.
    with connect(pg_empty_dsn) as admin, admin.transaction():
        admin.execute("SET LOCAL search_path TO public, pg_temp")
        admin.execute(sql.SQL(seed.sql))  # type: ignore[arg-type]
    with monkeypatch.context() as older_package:
        older_package.setattr(_installer, "load_migrations", lambda: before)
        with connect(pg_empty_dsn) as admin:
            _installer.install(admin, schema="public", app_role=str(role))
    with connect(pg_empty_dsn) as admin:
        _installer.install(admin, schema="public")
    with psycopg.connect(pg_empty_dsn, autocommit=True) as app:
        app.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(str(role))))
        app.execute("SELECT * FROM rc_configure('svc', p_slow_call_duration => '1 second')")
        assert _row(app, "SELECT state FROM rc_record('svc', true, p_duration => '2 s')") == (
            "OPEN",
        )
        app.execute("SELECT * FROM rc_force('svc', 'HALF_OPEN')")
        _, _, generation, _ = _row(app, "SELECT * FROM rc_try_acquire('svc')")
        assert _row(app, "SELECT * FROM rc_release('svc', 'default', %s)", (generation,)) == (
            "HALF_OPEN",
            generation,
        )
        assert _row(app, "SELECT * FROM rc_force('svc', 'OPEN', 'default', true)")[0] == "OPEN"
