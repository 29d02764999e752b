"""rc_record_many: a batch gives exactly what its outcomes give one by one, at O(batch) cost.

The reference is the Python machine (``_machine.record`` applied to each outcome in turn):
random configurations, random starting states (reached through the same calls on both
sides) and random batches whose outcomes carry the current generation, an older or a
newer one, or none — so that transitions happen in the middle of a batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_circuit import _machine as m
from resilient_circuit._machine import CircuitState, Config, State

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
NAMESPACE = "batches"
MS = 1_000_000  # nanoseconds

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    """One database for all of a test's examples: each example uses a key of its own."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


configs = st.builds(
    lambda fn, fd, n, s, c, h: Config.build(
        failure_limit=Fraction(min(fn, fd), fd),
        window_size=n,
        success_limit=s,
        cooldown=timedelta(milliseconds=c),
        half_open_timeout=timedelta(milliseconds=h),
    ),
    st.integers(1, 6),
    st.integers(1, 6),
    st.one_of(st.none(), st.integers(1, 8)),
    st.one_of(st.none(), st.sampled_from([Fraction(1, 1), Fraction(2, 3), Fraction(1, 2)])),
    st.integers(0, 50),
    st.integers(1, 40),
)

# A prefix reaches some state: ("record", success) or ("acquire", _) or ("force", state).
prefix_steps = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.booleans()),
        st.tuples(st.just("acquire"), st.just(False)),
        st.tuples(st.just("force"), st.sampled_from(list(CircuitState))),
    ),
    max_size=12,
)

# Each outcome's generation relative to the one current when the batch is sent.
batches = st.lists(
    st.tuples(st.booleans(), st.sampled_from([None, 0, 0, 0, 1, -1])), min_size=1, max_size=40
)


def _at(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def _row(conn: Conn, key: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT state, generation, execution_log, failure_count, open_until, permits"
        " FROM rc_circuit_breakers WHERE resource_key = %s AND namespace = %s",
        (key, NAMESPACE),
    ).fetchone()
    assert row is not None
    return tuple(row)


def _expected(st_: State) -> tuple[Any, ...]:
    return (
        st_.state.value,
        st_.generation,
        list(st_.window),
        st_.failure_count,
        None if st_.open_until is None else _at(st_.open_until),
        [_at(p) for p in st_.permits],
    )


def _configure(conn: Conn, key: str, cfg: Config) -> None:
    s = cfg.success_limit
    conn.execute(
        "SELECT * FROM rc_configure(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            key,
            NAMESPACE,
            cfg.failure_limit.numerator,
            cfg.failure_limit.denominator,
            cfg.window_size,
            None if s is None else s.numerator,
            None if s is None else s.denominator,
            timedelta(microseconds=cfg.cooldown_ns // 1000),
            timedelta(microseconds=cfg.half_open_timeout_ns // 1000),
        ),
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cfg=configs, prefix=prefix_steps, batch=batches, gap_ms=st.integers(0, 60))
def test_a_batch_equals_its_outcomes_one_by_one(
    conn: Conn,
    cfg: Config,
    prefix: list[tuple[str, Any]],
    batch: list[tuple[bool, int | None]],
    gap_ms: int,
) -> None:
    """rc_record_many_at leaves the row the Python machine reaches outcome by outcome."""
    key = uuid.uuid4().hex
    _configure(conn, key, cfg)
    machine, now = m.INITIAL, 0
    for step, arg in prefix:
        now += 5 * MS
        if step == "record":
            conn.execute(
                "SELECT * FROM rc_record_at(%s, %s, %s, NULL, %s)", (key, arg, NAMESPACE, _at(now))
            )
            machine = m.record(machine, cfg, now, arg, None)
        elif step == "acquire":
            conn.execute("SELECT * FROM rc_try_acquire_at(%s, %s, %s)", (key, NAMESPACE, _at(now)))
            machine = m.try_acquire(machine, cfg, now)[1]
        else:
            conn.execute(
                "SELECT * FROM rc_force_at(%s, %s, %s, %s)", (key, arg.value, NAMESPACE, _at(now))
            )
            machine = m.force(machine, cfg, now, arg)
    assert _row(conn, key) == _expected(machine)

    now += gap_ms * MS
    current = machine.generation
    outcomes = [ok for ok, _ in batch]
    generations = [None if rel is None else current + rel for _, rel in batch]
    reply = conn.execute(
        "SELECT * FROM rc_record_many_at(%s, %s, %s::boolean[], %s::bigint[], %s)",
        (key, NAMESPACE, outcomes, generations, _at(now)),
    ).fetchone()
    for ok, generation in zip(outcomes, generations, strict=True):
        machine = m.record(machine, cfg, now, ok, generation)
    assert reply == (machine.state.value, machine.generation)
    assert _row(conn, key) == _expected(machine)


def test_a_batch_costs_the_same_whatever_the_window(conn: Conn) -> None:
    """50,000 outcomes take about as long at window 10000 as at window 2."""
    timings = {}
    for window in (2, 10_000):
        key = uuid.uuid4().hex
        # Only a window of failures trips: the isolated ones below never do.
        conn.execute(
            "SELECT * FROM rc_configure(%s, %s, 1, 1, %s, NULL, NULL, '1 minute')",
            (key, NAMESPACE, window),
        )
        # A failure every 100 outcomes keeps the breaker off the all-success shortcut.
        outcomes = [i % 100 != 0 for i in range(50_000)]
        started = time.perf_counter()
        conn.execute(
            "SELECT * FROM rc_record_many(%s, %s, %s::boolean[], NULL)",
            (key, NAMESPACE, outcomes),
        )
        timings[window] = time.perf_counter() - started
        assert _row(conn, key)[:2] == ("CLOSED", 0)
    # Before, the cost grew with the window: about 20 times slower at 10000 than at 2.
    assert timings[10_000] < 3 * timings[2] + 0.2, timings


# Runs of outcomes: a count, success or failure, and a generation relative to the current
# one; long runs of current-generation successes (a healthy batch) are the likeliest.
run_batches = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 30), st.just(True), st.just(0)),
        st.tuples(st.integers(1, 5), st.booleans(), st.sampled_from([None, 0, 1, -1])),
    ),
    min_size=1,
    max_size=6,
)


def _full_row(conn: Conn, key: str) -> tuple[Any, ...]:
    """Every column but the key itself and when the row was made."""
    row = conn.execute(
        "SELECT to_jsonb(b) - 'resource_key' - 'created_at' FROM rc_circuit_breakers AS b"
        " WHERE resource_key = %s AND namespace = %s",
        (key, NAMESPACE),
    ).fetchone()
    assert row is not None
    return tuple(sorted(row[0].items()))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cfg=configs, prefix=prefix_steps, batch=run_batches, gap_ms=st.integers(0, 60))
def test_runs_record_what_their_outcomes_spelled_out_record(
    conn: Conn,
    cfg: Config,
    prefix: list[tuple[str, Any]],
    batch: list[tuple[int, bool, int | None]],
    gap_ms: int,
) -> None:
    """rc_record_runs_at leaves the row rc_record_many_at leaves with the runs spelled out,
    lifetime counters and timestamps included, and the row the Python machine reaches."""
    keys = [uuid.uuid4().hex, uuid.uuid4().hex]
    machine, now = m.INITIAL, 0
    for key in keys:
        _configure(conn, key, cfg)
    for step, arg in prefix:
        now += 5 * MS
        for key in keys:
            if step == "record":
                conn.execute(
                    "SELECT * FROM rc_record_at(%s, %s, %s, NULL, %s)",
                    (key, arg, NAMESPACE, _at(now)),
                )
            elif step == "acquire":
                conn.execute(
                    "SELECT * FROM rc_try_acquire_at(%s, %s, %s)", (key, NAMESPACE, _at(now))
                )
            else:
                conn.execute(
                    "SELECT * FROM rc_force_at(%s, %s, %s, %s)",
                    (key, arg.value, NAMESPACE, _at(now)),
                )
        if step == "record":
            machine = m.record(machine, cfg, now, arg, None)
        elif step == "acquire":
            machine = m.try_acquire(machine, cfg, now)[1]
        else:
            machine = m.force(machine, cfg, now, arg)

    now += gap_ms * MS
    current = machine.generation
    counts = [n for n, _, _ in batch]
    outcomes = [ok for _, ok, _ in batch]
    generations = [None if rel is None else current + rel for _, _, rel in batch]
    by_runs = conn.execute(
        "SELECT * FROM rc_record_runs_at(%s, %s, %s::integer[], %s::boolean[], %s::bigint[], %s)",
        (keys[0], NAMESPACE, counts, outcomes, generations, _at(now)),
    ).fetchone()
    spelled = [
        (ok, gen)
        for n, ok, gen in zip(counts, outcomes, generations, strict=True)
        for _ in range(n)
    ]
    one_by_one = conn.execute(
        "SELECT * FROM rc_record_many_at(%s, %s, %s::boolean[], %s::bigint[], %s)",
        (keys[1], NAMESPACE, [ok for ok, _ in spelled], [g for _, g in spelled], _at(now)),
    ).fetchone()
    for ok, generation in spelled:
        machine = m.record(machine, cfg, now, ok, generation)
    assert by_runs == one_by_one == (machine.state.value, machine.generation)
    assert _row(conn, keys[0]) == _expected(machine)
    assert _full_row(conn, keys[0]) == _full_row(conn, keys[1])


@pytest.mark.parametrize(
    ("counts", "successes", "generations"),
    [
        (None, "{t}", None),
        ("{}", "{t}", None),
        ("{0}", "{t}", None),
        ("{-1}", "{t}", None),
        ("{NULL}", "{t}", None),
        ("{2}", "{NULL}", None),
        ("{2}", "{t,f}", None),
        ("{2,1}", "{t,f}", "{1}"),
        ("{{1}}", "{{t}}", None),
    ],
)
def test_runs_that_do_not_line_up_are_refused(
    conn: Conn, counts: str | None, successes: str, generations: str | None
) -> None:
    """Counts must be >= 1, one success and one generation (if any) per run."""
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_counts"):
        conn.execute(
            "SELECT * FROM rc_record_runs('bad-runs', %s, %s::integer[], %s::boolean[],"
            " %s::bigint[])",
            (NAMESPACE, counts, successes, generations),
        )


def test_runs_adding_up_to_more_than_a_billion_outcomes_are_refused(conn: Conn) -> None:
    """A run costs the same whatever its length: without a bound, a few thousand calls of
    crafted runs would carry the lifetime counters past bigint, and every later outcome of
    the breaker would fail. The row is left as it was."""
    conn.execute("SELECT * FROM rc_configure('many-runs', %s)", (NAMESPACE,))
    before = _full_row(conn, "many-runs")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_counts"):
        conn.execute(
            "SELECT * FROM rc_record_runs('many-runs', %s, %s::integer[], %s::boolean[])",
            (NAMESPACE, [2**31 - 1, 2**31 - 1], [True, True]),
        )
    assert _full_row(conn, "many-runs") == before
    row = conn.execute(
        "SELECT * FROM rc_record_runs('many-runs', %s, %s::integer[], %s::boolean[])",
        (NAMESPACE, [600_000_000, 400_000_000], [True, True]),
    ).fetchone()
    assert row == ("CLOSED", 0)  # a billion, the most one call may record
