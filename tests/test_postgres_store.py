"""What only the PostgreSQL store does: round trips, its OPEN cache, the rows plain SQL
reads and writes, and configuration from the environment. Behaviour every store shares
is in tests/contract/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import PostgresStorage, create_storage
from tests._helpers import count_round_trips, db_row, flaky, forget_shared_storages, make

pytestmark = pytest.mark.postgres


@pytest.fixture
def namespace() -> str:
    """The test's own namespace in the database the tests share."""
    return f"store_{uuid.uuid4().hex}"


@pytest.fixture
def store(pg_shared_dsn: str, namespace: str) -> Iterator[PostgresStorage]:
    """A store in the test's namespace, closed after the test."""
    made = PostgresStorage(pg_shared_dsn, namespace=namespace)
    yield made
    made.close()


def test_the_table_row_holds_what_the_policy_reports(
    store: PostgresStorage, pg_shared_dsn: str, namespace: str
) -> None:
    """After calls, a trip and a reset, plain SQL reads the state the policy reports."""
    policy, _ = make(
        store, failure_limit=Fraction(2, 3), window_size=3, cooldown=timedelta(minutes=5)
    )
    call = flaky(policy)
    assert call() == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(False)
    assert db_row(pg_shared_dsn, "svc", namespace) == ("OPEN", 1, [True, False, False], 2, 1, 2)
    snap = policy.snapshot()
    assert (snap.state, snap.generation, list(snap.window), snap.failure_count) == (
        CircuitState.OPEN,
        1,
        [True, False, False],
        2,
    )
    policy.reset()
    assert db_row(pg_shared_dsn, "svc", namespace) == ("CLOSED", 2, [], 0, 0, 0)


def test_open_verdict_is_cached_for_the_remaining_cooldown(
    store: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While OPEN, rejections make no round trip until the server's open_until."""
    policy, _ = make(store, cooldown=timedelta(minutes=5))
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    sent = count_round_trips(monkeypatch, store)
    for _ in range(50):
        with pytest.raises(ProtectedCallError):
            call()
    assert len(sent) == 1  # the first rejection asked the server; the rest were local


def test_strict_mode_costs_two_round_trips_per_call(
    store: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLOSED call is one rc_try_acquire and one rc_record."""
    policy, _ = make(store)
    call = flaky(policy)
    call()
    sent = count_round_trips(monkeypatch, store)
    for _ in range(10):
        call()
    assert len(sent) == 20


def test_plain_sql_forces_what_policies_obey(
    store: PostgresStorage, pg_shared_dsn: str, namespace: str
) -> None:
    """rc_force from another client opens the breaker for the policy's next call."""
    policy, events = make(store, cooldown=timedelta(minutes=1))
    call = flaky(policy)
    assert call() == "ok"
    with psycopg.connect(pg_shared_dsn, autocommit=True) as conn:
        forced = conn.execute("SELECT * FROM rc_force('svc', 'OPEN', %s)", (namespace,)).fetchone()
        assert forced is not None
        assert forced[0] == "OPEN"
        permitted = conn.execute(
            "SELECT permitted FROM rc_try_acquire('svc', %s)", (namespace,)
        ).fetchone()
        assert permitted == (False,)
    with pytest.raises(ProtectedCallError):
        call()
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    policy.status = CircuitState.CLOSED
    assert call() == "ok"


def test_sql_callers_share_the_policy_configuration(
    store: PostgresStorage, pg_shared_dsn: str, namespace: str
) -> None:
    """The policy's first call stored its limits, so plain rc_record calls trip at its ratio."""
    policy, _ = make(
        store, failure_limit=Fraction(1, 2), window_size=4, cooldown=timedelta(hours=1)
    )
    flaky(policy)()
    with psycopg.connect(pg_shared_dsn, autocommit=True) as conn:
        states = [
            conn.execute("SELECT state FROM rc_record('svc', %s, %s)", (ok, namespace)).fetchone()
            for ok in (True, False, False)
        ]
    assert [s[0] for s in states if s] == ["CLOSED", "CLOSED", "OPEN"]


def test_create_storage_reads_the_environment(
    pg_shared_dsn: str, namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RC_DB_DSN switches policies without a storage to one shared PostgreSQL store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RC_DB_DSN", pg_shared_dsn)
    monkeypatch.setenv("RC_NAMESPACE", namespace)
    try:
        first = create_storage()
        assert isinstance(first, PostgresStorage)
        assert first is create_storage()
        assert first.namespace == namespace
        policy = CircuitProtectorPolicy(resource_key="from_env")
        assert policy.storage is first
        assert policy.namespace == namespace
    finally:
        forget_shared_storages()


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_a_dsn_asking_another_client_encoding_still_protects_calls(
    pg_dsn: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's own connections speak UTF-8 whatever the DSN or the database default:
    under SQL_ASCII every text column would arrive as bytes, and no call could run."""
    store = PostgresStorage(make_conninfo(pg_dsn, client_encoding=encoding), namespace="enc")
    try:
        policy = CircuitProtectorPolicy(resource_key="café", storage=store)
        call = policy(lambda: "ok")
        assert [call() for _ in range(3)] == ["ok"] * 3
        assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
        with store._get_connection() as conn:
            row = conn.execute(
                "SELECT successes FROM rc_circuit_breakers"
                " WHERE resource_key = %s AND namespace = 'enc'",
                ("café",),
            ).fetchone()
        assert row == (3,)
    finally:
        store.close()
