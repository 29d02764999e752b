"""The rc_* PL/pgSQL functions as SQL callers see them: validation, keys, clock, notifications.

The state machine's rules themselves are pinned by the shared vectors
(tests/test_sql_vectors.py); these tests cover what the vectors cannot: bad input,
odd keys, the server clock, pg_notify, privileges, concurrency and batching.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from resilient_circuit import _installer
from resilient_circuit.cli.connect import connect
from tests._helpers import channel
from tests._reference_model import RefBreaker, RefConfig

if TYPE_CHECKING:
    from tests.conftest import PgRole

Conn = psycopg.Connection[Any]
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh database holding the current schema."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def _table(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT * FROM rc_circuit_breakers ORDER BY resource_key, namespace"
    ).fetchall()


def _one(conn: Conn, query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


# ----------------------------------------------------------------------------- bad input

# (id, call, fragment the message must contain). Each call targets the breaker "svc",
# which the test sets up first, so the row it must leave unchanged exists.
# The one bigint whose negation overflows, where a fraction's sign moves to its numerator.
INT8_MIN = "-9223372036854775808"

BAD_CALLS = [
    *(
        (
            f"{name}_int8_min",
            f"rc_configure('svc', p_{name} => {INT8_MIN}, p_{pair} => {other}{extra})",
            f"p_{name}",
        )
        for name, pair, other, extra in (
            ("failure_limit_num", "failure_limit_den", "-1", ""),
            ("failure_limit_den", "failure_limit_num", "1", ""),
            ("success_limit_num", "success_limit_den", INT8_MIN, ""),
            ("success_limit_den", "success_limit_num", "1", ""),
            (
                "slow_call_limit_num",
                "slow_call_limit_den",
                INT8_MIN,
                ", p_slow_call_duration => '1 second'",
            ),
            (
                "slow_call_limit_den",
                "slow_call_limit_num",
                "1",
                ", p_slow_call_duration => '1 second'",
            ),
        )
    ),
    ("failure_limit_above_one", "rc_configure('svc', 'default', 3, 2)", "p_failure_limit_num"),
    ("failure_limit_zero", "rc_configure('svc', 'default', 0, 1)", "p_failure_limit_num"),
    ("failure_limit_negative", "rc_configure('svc', 'default', -1, 2)", "p_failure_limit_num"),
    ("failure_limit_den_zero", "rc_configure('svc', 'default', 1, 0)", "p_failure_limit_den"),
    ("failure_limit_null", "rc_configure('svc', 'default', NULL, 2)", "p_failure_limit_num"),
    ("restore_null", "rc_configure('svc', p_restore => NULL)", "p_restore"),
    (
        "success_limit_above_one",
        "rc_configure('svc', p_success_limit_num => 3, p_success_limit_den => 2)",
        "p_success_limit_num",
    ),
    (
        "success_limit_den_zero",
        "rc_configure('svc', p_success_limit_num => 1, p_success_limit_den => 0)",
        "p_success_limit_den",
    ),
    (
        "success_limit_half_set",
        "rc_configure('svc', p_success_limit_num => 1)",
        "p_success_limit_den",
    ),
    (
        "success_window_too_large",
        "rc_configure('svc', p_success_limit_num => 1, p_success_limit_den => 10001)",
        "p_success_limit_den",
    ),
    ("window_size_zero", "rc_configure('svc', p_window_size => 0)", "p_window_size"),
    ("window_size_too_large", "rc_configure('svc', p_window_size => 10001)", "p_window_size"),
    (
        "default_window_too_large",
        "rc_configure('svc', p_failure_limit_num => 1, p_failure_limit_den => 10001)",
        "p_window_size",
    ),
    ("cooldown_negative", "rc_configure('svc', p_cooldown => '-1 second')", "p_cooldown"),
    ("cooldown_null", "rc_configure('svc', p_cooldown => NULL)", "p_cooldown"),
    (
        "half_open_timeout_zero",
        "rc_configure('svc', p_half_open_timeout => '0')",
        "p_half_open_timeout",
    ),
    (
        "half_open_timeout_negative",
        "rc_configure('svc', p_half_open_timeout => '-5 seconds')",
        "p_half_open_timeout",
    ),
    ("force_unknown_state", "rc_force('svc', 'BROKEN')", "p_state"),
    ("force_empty_state", "rc_force('svc', '')", "p_state"),
    ("force_null_state", "rc_force('svc', NULL)", "p_state"),
    ("force_at_unknown_state", "rc_force_at('svc', 'AJAR', 'default', NULL)", "p_state"),
    (
        "set_state_failure_count_overflowing",
        "rc_set_state('svc', 'CLOSED', 2147483647, NULL, NULL)",
        "p_failure_count",
    ),
    ("record_null_success", "rc_record('svc', NULL)", "p_success"),
    ("record_at_null_success", "rc_record_at('svc', NULL, 'default', NULL, NULL)", "p_success"),
    ("record_many_null", "rc_record_many('svc', 'default', NULL)", "p_successes"),
    (
        "record_many_null_outcome",
        "rc_record_many('svc', 'default', ARRAY[true, NULL])",
        "p_successes",
    ),
    (
        "record_many_two_dimensions",
        "rc_record_many('svc', 'default', ARRAY[[true], [false]])",
        "p_successes",
    ),
    (
        "record_many_generations_mismatch",
        "rc_record_many('svc', 'default', ARRAY[true, false], ARRAY[1]::bigint[])",
        "p_generations",
    ),
]


@pytest.mark.parametrize(("call", "fragment"), [pytest.param(c, f, id=i) for i, c, f in BAD_CALLS])
def test_bad_argument_is_refused_and_changes_nothing(conn: Conn, call: str, fragment: str) -> None:
    """Invalid arguments raise SQLSTATE 22023 naming the parameter, and the row is untouched."""
    conn.execute(
        "SELECT * FROM rc_configure('svc', 'default', 1, 2, p_cooldown => '1 hour',"
        " p_success_limit_num => 2, p_success_limit_den => 3)"
    )
    conn.execute("SELECT * FROM rc_record('svc', true)")
    conn.execute("SELECT * FROM rc_record('svc', false)")
    before = _table(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute(f"SELECT * FROM {call}")
    assert caught.value.sqlstate == "22023"
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("rc: ")
    assert _table(conn) == before


# Every function that takes a key and a namespace, with the other arguments valid.
NAMED_CALLS = {
    "rc_try_acquire": "rc_try_acquire(%s, %s)",
    "rc_record": "rc_record(%s, true, %s)",
    "rc_record_many": "rc_record_many(%s, %s, ARRAY[true, false])",
    "rc_configure": "rc_configure(%s, %s)",
    "rc_force": "rc_force(%s, 'OPEN', %s)",
    "rc_reset": "rc_reset(%s, %s)",
    "rc_status": "rc_status(%s, %s)",
    "rc_try_acquire_at": "rc_try_acquire_at(%s, %s, now())",
    "rc_record_at": "rc_record_at(%s, false, %s, NULL, now())",
    "rc_record_many_at": "rc_record_many_at(%s, %s, ARRAY[false], NULL, now())",
    "rc_force_at": "rc_force_at(%s, 'CLOSED', %s, now())",
    "rc_reset_at": "rc_reset_at(%s, %s, now())",
}
BAD_NAMES = [
    ("", "default", "p_key"),
    ("k" * 256, "default", "p_key"),
    (None, "default", "p_key"),
    ("svc", "", "p_namespace"),
    ("svc", "n" * 256, "p_namespace"),
    ("svc", None, "p_namespace"),
]


@pytest.mark.parametrize("call", NAMED_CALLS.values(), ids=NAMED_CALLS.keys())
def test_bad_key_or_namespace_is_refused(conn: Conn, call: str) -> None:
    """Empty, 256-character and NULL keys and namespaces raise 22023 and create no row."""
    conn.execute("SELECT * FROM rc_record('svc', false)")
    before = _table(conn)
    for key, namespace, parameter in BAD_NAMES:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            conn.execute(f"SELECT * FROM {call}", (key, namespace))
        assert parameter in str(caught.value), (key, namespace)
        assert _table(conn) == before


def test_limits_are_stored_reduced_and_sign_normalised(conn: Conn) -> None:
    """5/10 is stored as 1/2 with a window of 2; -2/-4 is 1/2 too; a window may be set apart."""
    conn.execute("SELECT * FROM rc_configure('a', 'default', 5, 10)")
    conn.execute(
        "SELECT * FROM rc_configure('b', 'default', -2, -4, 7, p_success_limit_num => 6,"
        " p_success_limit_den => 8)"
    )
    rows = conn.execute(
        "SELECT resource_key, failure_limit_num, failure_limit_den, window_size,"
        " success_limit_num, success_limit_den FROM rc_circuit_breakers ORDER BY 1"
    ).fetchall()
    assert rows == [("a", 1, 2, 2, None, None), ("b", 1, 2, 7, 3, 4)]


def test_configuring_again_with_the_same_values_writes_nothing(conn: Conn) -> None:
    """Re-applying an unchanged configuration (every process start) leaves the row's version."""
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 1, 4)")
    before = _one(conn, "SELECT xmin::text, updated_at FROM rc_circuit_breakers")
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 2, 8)")
    assert _one(conn, "SELECT xmin::text, updated_at FROM rc_circuit_breakers") == before
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 1, 3)")
    assert _one(conn, "SELECT xmin::text, updated_at FROM rc_circuit_breakers") != before


def test_force_accepts_state_names_in_any_case(conn: Conn) -> None:
    """rc_force takes ' open ' or 'half_open' as readily as 'OPEN', like the Python API."""
    conn.execute("SELECT * FROM rc_configure('svc')")
    assert _one(conn, "SELECT * FROM rc_force('svc', ' open ')") == ("OPEN", 1)
    assert _one(conn, "SELECT * FROM rc_force('svc', 'half_open')") == ("HALF_OPEN", 2)


# ------------------------------------------------------------------------------ odd keys

ODD_NAMES = [
    "O'Brien",
    "semi;colon'); DROP TABLE rc_circuit_breakers; --",
    'double "quoted" \\ back\\slash',
    "ключ 🔑 键 ñ",
    "%s %(name)s $1 $$",
    "  spaced  ",
    "k" * 255,
    "ключ" * 63 + "🔑🔑🔑",  # 255 characters, well over 255 bytes
]


def test_keys_and_namespaces_are_data_never_sql(conn: Conn) -> None:
    """Quotes, semicolons, unicode and 255-character names are stored and found exactly."""
    for name in ODD_NAMES:
        assert _one(conn, "SELECT * FROM rc_record(%s, false, %s)", (name, name)) == ("OPEN", 1)
        assert _one(conn, "SELECT * FROM rc_status(%s, %s)", (name, name))[:3] == (
            name,
            name,
            "OPEN",
        )
        assert _one(conn, "SELECT permitted FROM rc_try_acquire(%s, %s)", (name, name)) == (True,)
    stored = conn.execute("SELECT resource_key, namespace, state FROM rc_circuit_breakers")
    assert sorted(stored.fetchall()) == sorted((name, name, "HALF_OPEN") for name in ODD_NAMES)


# --------------------------------------------------------------------------- defaults


def test_a_key_never_configured_behaves_like_0_4_5_defaults(conn: Conn) -> None:
    """Without rc_configure: one failure in a window of one trips, cooldown 0, one probe closes."""
    assert _one(conn, "SELECT * FROM rc_try_acquire('fresh')") == (True, "CLOSED", 0, None)
    assert _table(conn) == [], "admitting a call on a new key must not write"
    assert _one(conn, "SELECT * FROM rc_record('fresh', false)") == ("OPEN", 1)
    config = _one(
        conn,
        "SELECT failure_limit_num, failure_limit_den, window_size, success_limit_num,"
        " success_limit_den, cooldown, half_open_timeout FROM rc_circuit_breakers",
    )
    assert config == (1, 1, 1, None, None, timedelta(0), timedelta(seconds=10))
    assert _one(conn, "SELECT * FROM rc_try_acquire('fresh')") == (True, "HALF_OPEN", 2, None)
    assert _one(conn, "SELECT permitted FROM rc_try_acquire('fresh')") == (False,)
    assert _one(conn, "SELECT * FROM rc_record('fresh', true, 'default', 2)") == ("CLOSED", 3)


def test_documented_one_statement_calls(conn: Conn) -> None:
    """A psql user needs only a key: SELECT * FROM rc_record('payments', false) and friends."""
    assert _one(conn, "SELECT * FROM rc_record('payments', false)") == ("OPEN", 1)
    assert _one(conn, "SELECT * FROM rc_reset('payments')") == ("CLOSED", 2)
    assert _one(conn, "SELECT * FROM rc_force('payments', 'OPEN')") == ("OPEN", 3)
    assert _one(conn, "SELECT * FROM rc_configure('payments')") == ("OPEN", 3)
    assert _one(conn, "SELECT state FROM rc_status('payments')") == ("OPEN",)
    assert _one(conn, "SELECT * FROM rc_record_many('payments', 'default', '{}')") == ("OPEN", 3)


def test_seed_monitoring_queries_still_work(conn: Conn) -> None:
    """The three monitoring queries published with 0.4.5 run unchanged and answer correctly."""
    conn.execute("SELECT * FROM rc_configure('payment_service', p_cooldown => '60 seconds')")
    conn.execute("SELECT * FROM rc_record('payment_service', false)")
    conn.execute("SELECT * FROM rc_configure('search', 'default', 3, 10)")
    conn.execute("SELECT * FROM rc_record('search', false)")

    every = conn.execute(
        """
        SELECT resource_key, state, failure_count, open_until, updated_at
        FROM rc_circuit_breakers
        ORDER BY updated_at DESC;
        """
    ).fetchall()
    assert [row[:3] for row in every] == [("search", "CLOSED", 1), ("payment_service", "OPEN", 1)]
    opened = conn.execute(
        """
        SELECT resource_key, open_until
        FROM rc_circuit_breakers
        WHERE state = 'OPEN';
        """
    ).fetchall()
    assert [key for key, _ in opened] == ["payment_service"]
    assert opened[0][1] is not None
    closed = conn.execute(
        """
        SELECT resource_key, failure_count
        FROM rc_circuit_breakers
        WHERE state = 'CLOSED';
        """
    ).fetchall()
    assert closed == [("search", 1)]


# ------------------------------------------------------------------------------- clock


def test_public_functions_use_the_server_clock(conn: Conn) -> None:
    """A forced OPEN with a 1 h cooldown rejects with retry_after just under an hour."""
    conn.execute("SELECT * FROM rc_configure('slow', p_cooldown => '1 hour')")
    conn.execute("SELECT * FROM rc_force('slow', 'OPEN')")
    permitted, state, _, retry_after = _one(conn, "SELECT * FROM rc_try_acquire('slow')")
    assert (permitted, state) == (False, "OPEN")
    assert timedelta(minutes=59) < retry_after <= timedelta(hours=1)
    assert _one(
        conn,
        "SELECT open_until - clock_timestamp() BETWEEN '59 minutes' AND '1 hour'"
        " FROM rc_circuit_breakers",
    ) == (True,)


def test_time_is_read_when_the_call_runs_not_when_its_transaction_began(conn: Conn) -> None:
    """Inside a long transaction the functions still use clock_timestamp(), not now()."""
    conn.execute("SELECT * FROM rc_configure('svc')")
    with conn.transaction():
        conn.execute("SELECT pg_sleep(0.2)")
        conn.execute("SELECT * FROM rc_force('svc', 'OPEN')")
        assert _one(
            conn, "SELECT open_until >= now() + interval '0.2 seconds' FROM rc_circuit_breakers"
        ) == (True,)


def test_explicit_time_variants_take_null_as_the_server_clock(conn: Conn) -> None:
    """rc_*_at(..., NULL) behaves as the public function: the server's clock decides."""
    conn.execute("SELECT * FROM rc_configure('svc', p_cooldown => '10 minutes')")
    conn.execute("SELECT * FROM rc_force_at('svc', 'OPEN', 'default', NULL)")
    assert _one(
        conn,
        "SELECT open_until > clock_timestamp() + interval '9 minutes' FROM rc_circuit_breakers",
    ) == (True,)
    past = EPOCH + timedelta(days=1)
    assert _one(conn, "SELECT permitted FROM rc_try_acquire_at('svc', 'default', %s)", [past]) == (
        False,
    )


# --------------------------------------------------------------------------- durability


def _commit_setting_after(conn: Conn, *statements: str) -> str:
    """synchronous_commit as the transaction running ``statements`` would commit with."""
    with conn.transaction(force_rollback=True):
        for statement in statements:
            conn.execute(statement)
        return str(_one(conn, "SELECT current_setting('synchronous_commit')")[0])


def test_an_outcome_that_moves_no_state_commits_without_waiting_for_the_disk(
    conn: Conn,
) -> None:
    """rc_record and rc_record_many turn synchronous_commit off for their own transaction."""
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 1, 2)")
    assert _commit_setting_after(conn, "SELECT * FROM rc_record('svc', true)") == "off"
    many = "SELECT * FROM rc_record_many('svc', 'default', ARRAY[false, true])"
    assert _commit_setting_after(conn, many) == "off"
    # Only that transaction: the session's own setting is untouched afterwards.
    conn.execute("SELECT * FROM rc_record('svc', true)")
    assert _one(conn, "SELECT current_setting('synchronous_commit')") == ("on",)


def test_a_transition_and_the_callers_earlier_writes_commit_durably(conn: Conn) -> None:
    """A trip restores the saved setting; so does a transaction that wrote before the call."""
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 1, 1)")
    conn.execute("SET synchronous_commit = remote_write")
    assert _commit_setting_after(conn, "SELECT * FROM rc_record('svc', false)") == "remote_write"
    conn.execute("SELECT * FROM rc_reset('svc')")
    conn.execute("CREATE TEMP TABLE mine (n int)")
    earlier_write = "INSERT INTO mine VALUES (1)"
    recorded = "SELECT * FROM rc_record('svc', true)"
    assert _commit_setting_after(conn, earlier_write, recorded) == "remote_write"
    healthy = "SELECT * FROM rc_record_many('svc', 'default', ARRAY[true])"
    assert _commit_setting_after(conn, earlier_write, healthy) == "remote_write"
    trip = "SELECT * FROM rc_record_many('svc', 'default', ARRAY[true, false, true])"
    assert _commit_setting_after(conn, trip) == "remote_write"
    assert _commit_setting_after(conn, recorded) == "off"


# ----------------------------------------------------------------------- notifications


def test_transitions_are_notified_after_commit(pg_dsn: str, conn: Conn) -> None:
    """A committed transition sends its JSON on its namespace's channel; others send nothing."""
    shop = channel(pg_dsn, "shop")
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(shop)))
        conn.execute("SELECT * FROM rc_configure('pay\"ments', 'shop', p_cooldown => '5 s')")
        conn.execute("SELECT * FROM rc_record('pay\"ments', true, 'shop')")  # no transition
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT * FROM rc_force('pay\"ments', 'HALF_OPEN', 'shop')")
        conn.execute("SELECT * FROM rc_record('pay\"ments', false, 'shop')")
        notices = list(listener.notifies(timeout=10, stop_after=1))
    assert len(notices) == 1
    assert notices[0].channel == shop
    payload = json.loads(notices[0].payload)
    assert set(payload) == {"namespace", "key", "from", "to", "generation", "open_until"}
    assert (payload["namespace"], payload["key"]) == ("shop", 'pay"ments')
    assert (payload["from"], payload["to"], payload["generation"]) == ("CLOSED", "OPEN", 1)
    open_until = datetime.fromisoformat(payload["open_until"])
    stored = _one(conn, "SELECT open_until FROM rc_circuit_breakers")[0]
    assert open_until == stored


def test_every_kind_of_transition_is_notified(pg_dsn: str, conn: Conn) -> None:
    """Trip, half-open, close, force and reset each announce from, to and generation."""
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(pg_dsn, "default"))))
        conn.execute("SELECT * FROM rc_record('svc', false)")
        conn.execute("SELECT * FROM rc_try_acquire('svc')")
        conn.execute("SELECT * FROM rc_record('svc', true)")
        conn.execute("SELECT * FROM rc_force('svc', 'CLOSED')")
        conn.execute("SELECT * FROM rc_reset('svc')")
        notices = list(listener.notifies(timeout=10, stop_after=5))
    moves = [
        (p["from"], p["to"], p["generation"]) for p in (json.loads(n.payload) for n in notices)
    ]
    assert moves == [
        ("CLOSED", "OPEN", 1),
        ("OPEN", "HALF_OPEN", 2),
        ("HALF_OPEN", "CLOSED", 3),
        ("CLOSED", "CLOSED", 4),
        ("CLOSED", "CLOSED", 5),
    ]


# ---------------------------------------------------------------------- status and view


SHOWN = (
    "execution_log",
    "failure_count",
    "permits",
    "successes",
    "failures",
    "failure_limit",
    "window_size",
    "success_limit",
    "half_open_window",
    "cooldown",
    "half_open_timeout",
)


def test_status_and_view_describe_breakers_for_people(conn: Conn) -> None:
    """rc_status and the view show the window as S/F, limits as fractions and time left."""
    conn.execute("SELECT * FROM rc_configure('api', 'default', 3, 10)")
    conn.execute("SELECT * FROM rc_record_many('api', 'default', ARRAY[true, false, true])")
    conn.execute(
        "SELECT * FROM rc_configure('db', 'default', 1, 2, p_cooldown => '1 hour',"
        " p_success_limit_num => 2, p_success_limit_den => 3)"
    )
    conn.execute("SELECT * FROM rc_record_many('db', 'default', ARRAY[false, false])")
    conn.execute(
        "SELECT * FROM rc_configure('probe', p_success_limit_num => 2, p_success_limit_den => 3)"
    )
    conn.execute("SELECT * FROM rc_force('probe', 'HALF_OPEN')")
    conn.execute("SELECT * FROM rc_try_acquire('probe')")

    def status(key: str) -> dict[str, Any]:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute("SELECT * FROM rc_status(%s)", [key]).fetchone()
        assert row is not None
        return {name: row[name] for name in ("state", "generation", *SHOWN)}

    assert status("api") == {
        "state": "CLOSED",
        "generation": 0,
        "execution_log": "SFS",
        "failure_count": 0,
        "permits": 0,
        "successes": 2,
        "failures": 1,
        "failure_limit": "3/10",
        "window_size": 10,
        "success_limit": None,
        "half_open_window": 10,
        "cooldown": timedelta(0),
        "half_open_timeout": timedelta(seconds=10),
    }
    assert status("db") == {
        "state": "OPEN",
        "generation": 1,
        "execution_log": "FF",
        "failure_count": 2,
        "permits": 0,
        "successes": 0,
        "failures": 2,
        "failure_limit": "1/2",
        "window_size": 2,
        "success_limit": "2/3",
        "half_open_window": 3,
        "cooldown": timedelta(hours=1),
        "half_open_timeout": timedelta(seconds=10),
    }
    remaining = _one(conn, "SELECT cooldown_remaining FROM rc_status('db')")[0]
    assert timedelta(minutes=59) < remaining <= timedelta(hours=1)
    probe = _one(conn, "SELECT state, permits, cooldown_remaining FROM rc_status('probe')")
    assert probe == ("HALF_OPEN", 1, None)
    assert conn.execute("SELECT * FROM rc_status('unknown')").fetchall() == []
    keys = conn.execute(
        "SELECT resource_key, state FROM rc_circuit_breaker_status ORDER BY 1"
    ).fetchall()
    assert keys == [("api", "CLOSED"), ("db", "OPEN"), ("probe", "HALF_OPEN")]


# ----------------------------------------------------------------------------- batching


def _random_config(rng: random.Random) -> dict[str, Any]:
    den = rng.choice([1, 2, 3, 5, 10])
    success = rng.choice([None, (1, 1), (2, 3), (3, 4)])
    return {
        "p_failure_limit_num": rng.randint(1, den),
        "p_failure_limit_den": den,
        "p_window_size": rng.choice([None, None, rng.randint(1, 6)]),
        "p_success_limit_num": None if success is None else success[0],
        "p_success_limit_den": None if success is None else success[1],
        "p_cooldown": timedelta(milliseconds=rng.choice([0, 5, 50])),
        "p_half_open_timeout": timedelta(milliseconds=rng.choice([3, 20, 1000])),
    }


def _state_of(conn: Conn, key: str) -> dict[str, Any]:
    state, generation, log, failure_count, open_until, permits, successes, failures = _one(
        conn,
        "SELECT state, generation, execution_log, failure_count, open_until, permits,"
        " successes, failures FROM rc_circuit_breakers WHERE resource_key = %s",
        [key],
    )
    return {
        "state": state,
        "generation": generation,
        "window": list(log),
        "failure_count": failure_count,
        "open_until_ms": _ms_since_epoch(open_until),
        "permits_ms": [_ms_since_epoch(p) for p in permits],
        "successes": successes,
        "failures": failures,
    }


def _ms_since_epoch(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - EPOCH) // timedelta(milliseconds=1)


def _model_state(ref: RefBreaker) -> dict[str, Any]:
    return {
        "state": ref.state,
        "generation": ref.generation,
        "window": list(ref.window),
        "failure_count": ref.failure_count,
        "open_until_ms": ref.open_until_ms,
        "permits_ms": list(ref.permits_ms),
        "successes": ref.successes,
        "failures": ref.failures,
    }


def _model_config(config: dict[str, Any]) -> RefConfig:
    success = config["p_success_limit_num"]
    return RefConfig(
        failure_limit=Fraction(config["p_failure_limit_num"], config["p_failure_limit_den"]),
        window_size=config["p_window_size"],
        success_limit=None if success is None else Fraction(success, config["p_success_limit_den"]),
        cooldown_ms=config["p_cooldown"] // timedelta(milliseconds=1),
        half_open_timeout_ms=config["p_half_open_timeout"] // timedelta(milliseconds=1),
    )


def test_record_many_decides_like_the_reference_model_one_outcome_at_a_time(conn: Conn) -> None:
    """A batch, and the same outcomes one rc_record at a time, end where the model of §3 does."""
    rng = random.Random(20240229)
    for case in range(40):
        config = _random_config(rng)
        one, many = f"one_{case}", f"many_{case}"
        for key in (one, many):
            conn.execute(
                "SELECT * FROM rc_configure(p_key => %(key)s, p_namespace => 'default',"
                " p_failure_limit_num => %(p_failure_limit_num)s,"
                " p_failure_limit_den => %(p_failure_limit_den)s,"
                " p_window_size => %(p_window_size)s,"
                " p_success_limit_num => %(p_success_limit_num)s,"
                " p_success_limit_den => %(p_success_limit_den)s,"
                " p_cooldown => %(p_cooldown)s, p_half_open_timeout => %(p_half_open_timeout)s)",
                {**config, "key": key},
            )
        model = RefBreaker(_model_config(config))
        at_ms = 0
        for _ in range(12):
            at_ms += rng.choice([0, 1, 4, 30])
            now = EPOCH + timedelta(milliseconds=at_ms)
            for _ in range(rng.randint(0, 3)):
                permitted, state, generation, retry_after = model.acquire(at_ms)
                expected = (
                    permitted,
                    state,
                    generation,
                    None if retry_after is None else timedelta(milliseconds=retry_after),
                )
                for key in (one, many):
                    answer = _one(
                        conn, "SELECT * FROM rc_try_acquire_at(%s, 'default', %s)", (key, now)
                    )
                    assert answer == expected, (case, key)
            size = rng.randint(0, 6)
            successes = [rng.random() < 0.5 for _ in range(size)]
            choices = [None, model.generation, model.generation, model.generation - 1]
            generations = [rng.choice(choices) for _ in range(size)]
            answer: tuple[Any, ...] = (model.state, model.generation)
            for success, gen in zip(successes, generations, strict=True):
                answer = model.record(at_ms, success, gen)
                reply = _one(
                    conn,
                    "SELECT * FROM rc_record_at(%s, %s, 'default', %s, %s)",
                    (one, success, gen, now),
                )
                assert reply == answer, (case, successes, generations)
            batch = _one(
                conn,
                "SELECT * FROM rc_record_many_at(%s, 'default', %s, %s, %s)",
                (many, successes, generations, now),
            )
            assert batch == answer, (case, successes, generations)
            for key in (one, many):
                assert _state_of(conn, key) == _model_state(model), (case, key, successes)


def test_record_many_without_generations_counts_toward_the_current_one(conn: Conn) -> None:
    """rc_record_many(key, ns, outcomes) with the server clock trips like plain rc_record."""
    conn.execute("SELECT * FROM rc_configure('svc', 'default', 2, 3)")
    assert _one(conn, "SELECT * FROM rc_record_many('svc', 'default', ARRAY[true, false])") == (
        "CLOSED",
        0,
    )
    assert _one(
        conn, "SELECT * FROM rc_record_many('svc', 'default', ARRAY[false, true, true])"
    ) == ("OPEN", 1)
    assert _one(conn, "SELECT execution_log, successes, failures FROM rc_status('svc')") == (
        "SFF",
        3,
        2,
    )


def test_largest_window_is_kept_to_its_size(conn: Conn) -> None:
    """A 10000-outcome window stays 10000 long as outcomes keep arriving."""
    conn.execute("SELECT * FROM rc_configure('big', 'default', 1, 10000)")
    conn.execute("SELECT * FROM rc_record_many('big', 'default', %s)", [[True] * 10005])
    assert _one(conn, "SELECT * FROM rc_record('big', false)") == ("OPEN", 1)
    assert _one(
        conn, "SELECT cardinality(execution_log), execution_log[10000] FROM rc_circuit_breakers"
    ) == (10000, False)


# -------------------------------------------------------------------------- concurrency


def test_concurrent_records_are_never_lost(pg_dsn: str, conn: Conn) -> None:
    """Outcomes recorded from several connections at once all reach the lifetime counters."""
    conn.execute("SELECT * FROM rc_configure('busy', 'default', 1, 2, 4)")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as own:
                for call in range(60):
                    own.execute("SELECT * FROM rc_record('busy', %s)", [(worker + call) % 3 > 0])
                    own.execute("SELECT * FROM rc_try_acquire('busy')")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _one(conn, "SELECT successes + failures FROM rc_circuit_breakers") == (360,)


def test_half_open_admits_no_more_trials_than_outcomes_needed_across_connections(
    pg_dsn: str, conn: Conn
) -> None:
    """Eight connections racing for trials in a half-open phase needing three get three."""
    conn.execute(
        "SELECT * FROM rc_configure('probe', p_success_limit_num => 2, p_success_limit_den => 3,"
        " p_half_open_timeout => '1 hour')"
    )
    conn.execute("SELECT * FROM rc_force('probe', 'HALF_OPEN')")
    barrier = threading.Barrier(8)
    answers: list[bool] = []
    lock = threading.Lock()

    def work() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as own:
            barrier.wait()
            permitted = _one(own, "SELECT permitted FROM rc_try_acquire('probe')")[0]
        with lock:
            answers.append(permitted)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [False] * 5 + [True] * 3


# ---------------------------------------------------------------------------- privileges


def test_function_attributes(conn: Conn) -> None:
    """Public functions are SECURITY DEFINER; all pin pg_catalog, pg_temp; PUBLIC runs none."""
    rows = conn.execute(
        """
        SELECT p.proname, p.prosecdef, p.proconfig::text,
               has_function_privilege('public', p.oid, 'EXECUTE')
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'rc\\_%'
        ORDER BY 1
        """
    ).fetchall()
    definers = {name for name, definer, _, _ in rows if definer}
    assert definers == {
        "rc_budget_deposit",
        "rc_budget_forget",
        "rc_budget_gc",
        "rc_budget_status",
        "rc_budget_withdraw",
        "rc_channel",
        "rc_channels",
        "rc_configure",
        "rc_force",
        "rc_forget",
        "rc_gc",
        "rc_listen",
        "rc_listen_all",
        "rc_record",
        "rc_record_many",
        "rc_record_runs",
        "rc_release",
        "rc_reset",
        "rc_session_is_owner",
        "rc_set_state",
        "rc_status",
        "rc_try_acquire",
    }
    for name, _, config, public in rows:
        assert config == '{"search_path=pg_catalog, pg_temp"}', name
        assert not public, name


def test_an_app_role_changes_breakers_only_through_the_functions(
    conn: Conn, pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Granted EXECUTE alone, a role records through rc_record but may not touch the table."""
    role = sql.Identifier(pg_role())
    grant = "GRANT EXECUTE ON FUNCTION rc_record(text, boolean, text, bigint, interval) TO {}"
    conn.execute(sql.SQL(grant).format(role))
    with psycopg.connect(pg_dsn, autocommit=True) as app:
        app.execute(sql.SQL("SET ROLE {}").format(role))
        assert _one(app, "SELECT * FROM rc_record('svc', false)") == ("OPEN", 1)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT * FROM rc_force('svc', 'CLOSED')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT * FROM rc_force_at('svc', 'CLOSED', 'default', NULL)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("UPDATE rc_circuit_breakers SET state = 'CLOSED'")
    assert _one(conn, "SELECT state FROM rc_circuit_breakers") == ("OPEN",)


def test_functions_find_their_schema_whatever_the_callers_search_path(pg_empty_dsn: str) -> None:
    """Installed into another schema, the functions work with the caller's search_path empty."""
    with connect(pg_empty_dsn) as setup:
        _installer.install(setup, schema="Breakers 2")
    with psycopg.connect(pg_empty_dsn, autocommit=True) as caller:
        caller.execute("SET search_path = ''")
        assert _one(caller, "SELECT * FROM \"Breakers 2\".rc_record('svc', false)") == ("OPEN", 1)
        assert _one(caller, "SELECT permitted FROM \"Breakers 2\".rc_try_acquire('svc')") == (True,)
        assert _one(caller, "SELECT state FROM \"Breakers 2\".rc_status('svc')") == ("HALF_OPEN",)


@pytest.mark.parametrize("until", ["-infinity", "infinity"])
def test_set_state_open_until_infinite_leaves_the_breaker_usable(conn: Conn, until: str) -> None:
    """rc_set_state to OPEN until an infinite time stores a finite one: rc_try_acquire,
    rc_record and rc_status keep answering for that breaker instead of failing with
    "cannot subtract infinite timestamps"."""
    conn.execute("SELECT * FROM rc_set_state('svc', 'OPEN', 0, %s, NULL)", [until])
    assert _one(conn, "SELECT isfinite(open_until) FROM rc_circuit_breakers") == (True,)
    permitted, state, _, _ = _one(conn, "SELECT * FROM rc_try_acquire('svc')")
    assert (permitted, state) == ((True, "HALF_OPEN") if until == "-infinity" else (False, "OPEN"))
    conn.execute("SELECT * FROM rc_record('svc', true)")
    assert len(conn.execute("SELECT * FROM rc_status('svc')").fetchall()) == 1
