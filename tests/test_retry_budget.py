"""RetryBudget: the token bucket in memory and in PostgreSQL, and a retry policy spending it.

What every budget store shares (budgets shared by name, policies giving up) is in
tests/contract/test_retry_budget.py.
"""

from __future__ import annotations

import gc
import logging
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_circuit import (
    RetryBudget,
    RetryLimitReached,
    RetryWithBackoffPolicy,
    _installer,
)
from resilient_circuit._budget_pg import PostgresBudgetStore
from resilient_circuit.retry import GiveUpEvent
from resilient_circuit.retry_budget import InMemoryBudgetStore, _flusher

if TYPE_CHECKING:
    from tests.conftest import PgRole

EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_new_budget_holds_one_second_of_floor_and_refills_at_the_floor_rate() -> None:
    """min_per_second=4: four retries at once, then one per quarter second, never above four."""
    clock = Clock()
    store = InMemoryBudgetStore(clock=clock)

    def withdraw() -> bool:
        return store.settle("ns", "svc", 0, 0.2, 4.0, True)

    assert [withdraw() for _ in range(5)] == [True, True, True, True, False]
    clock.now += 0.25
    assert [withdraw(), withdraw()] == [True, False]
    clock.now += 3600
    assert [withdraw() for _ in range(5)] == [True, True, True, True, False]


def test_first_attempts_pay_for_a_ratio_of_retries() -> None:
    """Without a floor, ten first attempts at ratio 1/5 buy exactly two retries."""
    store = InMemoryBudgetStore(clock=Clock())
    assert store.settle("ns", "svc", 10, 0.2, 0.0, False) is False
    assert [store.settle("ns", "svc", 0, 0.2, 0.0, True) for _ in range(3)] == [True, True, False]


def test_banked_tokens_decay_so_a_healthy_hour_buys_no_retry_storm() -> None:
    """A million first attempts an hour ago leave nothing but the floor."""
    clock = Clock()
    store = InMemoryBudgetStore(clock=clock)
    store.settle("ns", "svc", 1_000_000, 0.2, 1.0, False)
    clock.now += 3600
    assert [store.settle("ns", "svc", 0, 0.2, 1.0, True) for _ in range(2)] == [True, False]
    store.settle("ns", "svc", 100, 0.2, 0.0, False)  # 20 tokens
    clock.now += 10  # one time constant: 20 / e, about 7.4, remain
    granted = sum(store.settle("ns", "svc", 0, 0.2, 0.0, True) for _ in range(20))
    assert granted == 7


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.001, 0.05, 0.3, 1.0, 7.0, 45.0]),
            st.integers(0, 60),
            st.booleans(),
        ),
        max_size=80,
    ),
    ratio=st.sampled_from([0.0, 0.1, 0.2, 1.0, 3.0]),
    rate=st.sampled_from([0.0, 0.5, 2.0, 10.0]),
)
def test_retries_never_exceed_ratio_times_first_attempts_plus_the_floor(
    steps: list[tuple[float, int, bool]], ratio: float, rate: float
) -> None:
    """Whatever the timing, granted retries <= ratio x first attempts + rate x (seconds + 1)."""
    clock = Clock()
    start = clock.now
    store = InMemoryBudgetStore(clock=clock)
    granted = deposited = 0
    for elapsed, first, withdraw in steps:
        clock.now += elapsed
        deposited += first
        granted += store.settle("ns", "svc", first, ratio, rate, withdraw)
        assert granted <= ratio * deposited + rate * (clock.now - start + 1) + 1e-6


def test_policy_gives_up_with_the_last_error_when_the_budget_says_no() -> None:
    """A dead dependency: retries stop at ratio x first attempts; calls end in RetryLimitReached."""
    store = InMemoryBudgetStore(clock=Clock())
    budget = RetryBudget("dead", Fraction(1, 5), min_per_second=0, namespace="t", store=store)
    gave_up: list[GiveUpEvent] = []
    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        raise ConnectionError(f"call {calls['n']}")

    retry = RetryWithBackoffPolicy(max_retries=3, budget=budget, on_give_up=gave_up.append)(down)
    for _ in range(100):
        with pytest.raises(RetryLimitReached, match="budget") as caught:
            retry()
        assert isinstance(caught.value.__cause__, ConnectionError)
    retries = calls["n"] - 100
    assert retries == 20
    assert {e.reason for e in gave_up} == {"budget"}
    assert budget.pending == 0


def test_rare_failures_of_a_healthy_dependency_are_all_retried() -> None:
    """One failure in twenty calls, well under the ratio: every one is retried and succeeds."""
    store = InMemoryBudgetStore(clock=Clock())
    budget = RetryBudget("healthy", namespace="t", min_per_second=0, store=store)
    calls = {"n": 0}

    def sometimes() -> str:
        calls["n"] += 1
        if calls["n"] % 20 == 0:
            raise ConnectionError("blip")
        return "ok"

    retry = RetryWithBackoffPolicy(max_retries=1, budget=budget)(sometimes)
    assert all(retry() == "ok" for _ in range(1000))


def test_pending_deposits_are_flushed_by_the_flusher_and_by_flush() -> None:
    """First attempts are counted locally and deposited in one batch."""
    clock = Clock()
    store = InMemoryBudgetStore(clock=clock)
    budget = RetryBudget("svc", namespace="t", min_per_second=0, store=store)
    for _ in range(50):
        budget.deposit()
    assert budget.pending == 50
    budget.flush()
    assert budget.pending == 0
    assert store.balance("svc", "t") == pytest.approx(10.0)


def test_deposits_of_a_budget_its_owner_dropped_are_still_made() -> None:
    """A budget collected with deposits pending hands them to the flusher."""
    store = InMemoryBudgetStore(clock=Clock())
    budget = RetryBudget("dropped", namespace="t", min_per_second=0, store=store)
    for _ in range(25):
        budget.deposit()
    del budget
    gc.collect()
    _flusher.flush_all()
    assert store.balance("dropped", "t") == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, TypeError, "name"),
        ({"namespace": "x" * 256}, ValueError, "namespace"),
        ({"ratio": -1}, ValueError, "ratio"),
        ({"ratio": "1/5"}, TypeError, "ratio"),
        ({"min_per_second": -1}, ValueError, "min_per_second"),
        ({"min_per_second": True}, TypeError, "min_per_second"),
        ({"flush_interval": "1"}, TypeError, "flush_interval"),
        ({"flush_interval": 61}, ValueError, "flush_interval"),
        ({"flush_interval": timedelta(0)}, ValueError, "flush_interval"),
        ({"store": object()}, TypeError, "store"),
    ],
)
def test_budget_settings_are_validated_naming_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """Wrong settings raise an error that names the parameter."""
    args: dict[str, Any] = {"name": "svc", **kwargs}
    with pytest.raises(error, match=name):
        RetryBudget(**args)


def test_an_unreachable_database_falls_back_to_a_budget_of_this_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No server: retries are still limited, by an in-memory bucket, with one warning."""
    store = PostgresBudgetStore(
        "host=127.0.0.1 port=1 dbname=x user=u password=s3cret connect_timeout=1"
    )
    budget = RetryBudget("svc", namespace="t", min_per_second=2, store=store)
    with caplog.at_level(logging.WARNING, logger="resilient_circuit.retry_budget"):
        granted = [budget.withdraw() for _ in range(4)]
    assert granted == [True, True, False, False]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "s3cret" not in caplog.text
    assert "s3cret" not in repr(store)


def test_a_malformed_dsn_is_refused_without_echoing_it() -> None:
    """A DSN psycopg cannot parse raises ValueError naming `dsn`, password left out."""
    with pytest.raises(ValueError, match="dsn") as caught:
        PostgresBudgetStore("postgresql://u:s3cret@host:notaport/db?bad")
    assert "s3cret" not in str(caught.value)


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database holding the current schema."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def _settle_sql(
    conn: psycopg.Connection[Any],
    first: int,
    ratio: float,
    rate: float,
    withdraw: bool,
    at: float,
    name: str = "svc",
) -> tuple[bool, float]:
    row = conn.execute(
        "SELECT permitted, balance FROM rc_budget_settle_at(%s, 'ns', %s, %s, %s, %s, %s)",
        (name, first, ratio, rate, withdraw, EPOCH + timedelta(seconds=at)),
    ).fetchone()
    assert row is not None
    return bool(row[0]), float(row[1])


def test_sql_and_memory_buckets_agree_step_by_step(conn: psycopg.Connection[Any]) -> None:
    """A random sequence of deposits and withdrawals gets the same answers from both twins."""
    rng = random.Random(11)
    clock = Clock()
    clock.now = 0.0
    memory = InMemoryBudgetStore(clock=clock)
    at = 0.0
    for _ in range(300):
        at += rng.choice([0.0, 0.0, 0.01, 0.1, 0.5, 3.0, 30.0])
        clock.now = at
        first = rng.choice([0, 0, 1, 5, 40])
        withdraw = rng.random() < 0.7
        expected = memory.settle("ns", "svc", first, 0.2, 3.0, withdraw)
        permitted, balance = _settle_sql(conn, first, 0.2, 3.0, withdraw, at)
        assert permitted == expected
        assert balance == pytest.approx(memory.balance("svc", "ns"), abs=1e-6)


def test_sql_functions_count_and_keep_one_row_per_budget(conn: psycopg.Connection[Any]) -> None:
    """rc_budget_deposit and rc_budget_withdraw update one row with running totals."""
    # 2.4 tokens: the real clock's decay between the statements cannot take one away.
    conn.execute("SELECT rc_budget_deposit('svc', 'ns', 12, 0.2, 0)")
    granted = [
        conn.execute("SELECT rc_budget_withdraw('svc', 'ns', 0)").fetchone()[0]  # type: ignore[index]
        for _ in range(3)
    ]
    assert granted == [True, True, False]
    row = conn.execute(
        "SELECT first_attempts, retries, refusals FROM rc_retry_budgets"
        " WHERE name = 'svc' AND namespace = 'ns'"
    ).fetchone()
    assert row == (12, 2, 1)
    assert conn.execute("SELECT count(*) FROM rc_retry_budgets").fetchone() == (1,)


BAD_BUDGET_CALLS = [
    ("rc_budget_withdraw(NULL)", "p_name"),
    ("rc_budget_withdraw('')", "p_name"),
    ("rc_budget_withdraw(repeat('x', 256))", "p_name"),
    ("rc_budget_withdraw('svc', NULL)", "p_namespace"),
    ("rc_budget_withdraw('svc', 'ns', -1)", "p_min_per_second"),
    ("rc_budget_withdraw('svc', 'ns', 'NaN')", "p_min_per_second"),
    ("rc_budget_withdraw('svc', 'ns', 1, -5)", "p_first_attempts"),
    ("rc_budget_deposit('svc', 'ns', NULL)", "p_first_attempts"),
    ("rc_budget_deposit('svc', 'ns', 1, -0.1)", "p_ratio"),
    ("rc_budget_deposit('svc', 'ns', 1, 'Infinity')", "p_ratio"),
    ("rc_budget_settle_at('svc', 'ns', 1, 0.2, 1, NULL, NULL)", "p_withdraw"),
]


@pytest.mark.parametrize(("call", "name"), BAD_BUDGET_CALLS)
def test_bad_sql_arguments_raise_22023_naming_the_parameter(
    conn: psycopg.Connection[Any], call: str, name: str
) -> None:
    """Every invalid argument is refused with invalid_parameter_value and its name."""
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=name):
        conn.execute(f"SELECT {call}")
    assert conn.execute("SELECT count(*) FROM rc_retry_budgets").fetchone() == (0,)


def test_app_role_may_withdraw_and_deposit_but_not_touch_the_table(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """pg-setup --app-role grants the two public functions, not the table nor the _at function."""
    role = pg_role()
    with psycopg.connect(pg_empty_dsn, autocommit=True) as admin:
        _installer.install(admin, app_role=role)
    app_dsn = role.dsn(pg_empty_dsn)
    store = PostgresBudgetStore(app_dsn)
    try:
        assert store.settle("default", "svc", 5, 0.2, 1.0, True) is True
        store.settle("default", "svc", 5, 0.2, 1.0, False)
    finally:
        store.close()
    with psycopg.connect(app_dsn, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT * FROM rc_retry_budgets")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT rc_budget_settle_at('svc', 'ns', 0, 0.2, 1, true, now())")


def test_app_role_may_not_spend_another_namespaces_budget(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A role granted namespace "shop" is refused another namespace's budget, in SQL."""
    role = pg_role()
    with psycopg.connect(pg_empty_dsn, autocommit=True) as admin:
        _installer.install(admin, app_role=role, namespaces=["shop"])
    app_dsn = role.dsn(pg_empty_dsn)
    with psycopg.connect(app_dsn, autocommit=True) as app:
        assert app.execute("SELECT rc_budget_withdraw('svc', 'shop')").fetchone() == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="namespace"):
            app.execute("SELECT rc_budget_withdraw('svc', 'billing')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="namespace"):
            app.execute("SELECT rc_budget_deposit('svc', 'billing', 100)")
    with psycopg.connect(pg_empty_dsn, autocommit=True) as admin:
        rows = admin.execute("SELECT namespace FROM rc_retry_budgets").fetchall()
    assert rows == [("shop",)]


def test_budgets_live_where_breakers_do(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL when RC_DB_DSN is set (one store per DSN), else one in-memory store a process."""
    monkeypatch.delenv("RC_DB_DSN", raising=False)
    monkeypatch.delenv("RC_DB_HOST", raising=False)
    memory = RetryBudget("svc").store
    assert isinstance(memory, InMemoryBudgetStore)
    assert RetryBudget("other").store is memory
    monkeypatch.setenv("RC_DB_DSN", pg_dsn)
    shared = RetryBudget("svc").store
    try:
        assert isinstance(shared, PostgresBudgetStore)
        assert RetryBudget("other").store is shared
        assert RetryBudget("svc", min_per_second=1).withdraw() is True
    finally:
        shared.close()


def test_pending_deposits_are_flushed_when_the_process_exits(pg_dsn: str) -> None:
    """A process that ends normally deposits its last first attempts on the way out."""
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "tests" / "workers" / "budget_exit.py"), pg_dsn, "700"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT first_attempts FROM rc_retry_budgets WHERE name = 'exit' AND namespace = 'exit'"
        ).fetchone()
    assert row == (700,)


def test_a_breaker_storage_given_as_the_budget_store_names_the_budget_stores() -> None:
    """A newcomer passes the breakers' PostgresStorage: the error names what fits."""
    from resilient_circuit.storage import InMemoryStorage

    with pytest.raises(TypeError, match=r"`store`.*PostgresBudgetStore.*got InMemoryStorage"):
        RetryBudget("checkout", store=InMemoryStorage())  # type: ignore[arg-type]
