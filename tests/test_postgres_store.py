"""The PostgreSQL store: breakers shared through the database by separate clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import PostgresStorage, create_storage
from resilient_circuit.storage import postgres as pg_module


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[list[PostgresStorage]]:
    """Two stores with their own pools: as far as the database can tell, two processes."""
    made = [PostgresStorage(pg_dsn, namespace="test") for _ in range(2)]
    yield made
    for store in made:
        store.close()


def make(store: PostgresStorage, **kwargs: Any) -> tuple[CircuitProtectorPolicy, list[Any]]:
    events: list[Any] = []
    kwargs.setdefault("resource_key", "payments")
    policy = CircuitProtectorPolicy(
        storage=store, on_status_change=lambda p, o, n: events.append((o, n)), **kwargs
    )
    return policy, events


def flaky(policy: CircuitProtectorPolicy) -> Any:
    @policy
    def call(ok: bool = True) -> str:
        if not ok:
            raise ConnectionError("down")
        return "ok"

    return call


def count_round_trips(monkeypatch: pytest.MonkeyPatch, store: PostgresStorage) -> list[Any]:
    """Every statement the store sends, recorded on its way to the real database."""
    sent: list[Any] = []
    real_fetch = store.fetch

    def fetch(breaker: Any, statement: Any, params: Any, **kw: Any) -> Any:
        sent.append(params)
        return real_fetch(breaker, statement, params, **kw)

    monkeypatch.setattr(store, "fetch", fetch)
    return sent


def row(dsn: str, key: str, namespace: str = "test") -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT state, generation, execution_log, failure_count, successes, failures"
            " FROM rc_circuit_breakers WHERE resource_key = %s AND namespace = %s",
            (key, namespace),
        ).fetchone()
    assert found is not None
    return found


def test_a_trip_in_one_client_stops_the_other(stores: list[PostgresStorage], pg_dsn: str) -> None:
    """One client's failures open the breaker; the other's next call is rejected unrun."""
    first, first_events = make(
        stores[0], failure_limit=Fraction(2, 3), window_size=3, cooldown=timedelta(minutes=5)
    )
    second, second_events = make(
        stores[1], failure_limit=Fraction(2, 3), window_size=3, cooldown=timedelta(minutes=5)
    )
    call_first, call_second = flaky(first), flaky(second)
    ran: list[int] = []

    @second
    def counted() -> None:
        ran.append(1)

    assert call_second() == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call_first(False)
    assert first.status is CircuitState.OPEN
    with pytest.raises(ProtectedCallError) as rejected:
        counted()
    assert ran == []
    assert rejected.value.retry_after is not None
    assert timedelta(minutes=4) < rejected.value.retry_after <= timedelta(minutes=5)
    assert first_events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert second_events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    state, generation, log, failure_count, successes, failures = row(pg_dsn, "payments")
    assert (state, generation, log, failure_count) == ("OPEN", 1, [True, False, False], 2)
    assert (successes, failures) == (1, 2)


def test_open_verdict_is_cached_for_the_remaining_cooldown(
    stores: list[PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While OPEN, rejections make no round trip until the server's open_until."""
    policy, _ = make(stores[0], cooldown=timedelta(minutes=5))
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    sent = count_round_trips(monkeypatch, stores[0])
    for _ in range(50):
        with pytest.raises(ProtectedCallError):
            call()
    assert len(sent) == 1  # the first rejection asked the server; the rest were local


def test_open_cache_expires_with_the_cooldown(stores: list[PostgresStorage]) -> None:
    """A short cooldown passes and the next call is admitted as a trial."""
    policy, events = make(stores[0], cooldown=timedelta(milliseconds=200))
    call = flaky(policy)
    with pytest.raises(ConnectionError):
        call(False)
    with pytest.raises(ProtectedCallError):
        call()
    import time

    time.sleep(0.25)
    assert call() == "ok"
    assert policy.status is CircuitState.CLOSED
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_strict_mode_costs_two_round_trips_per_call(
    stores: list[PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLOSED call is one rc_try_acquire and one rc_record."""
    policy, _ = make(stores[0])
    call = flaky(policy)
    call()
    sent = count_round_trips(monkeypatch, stores[0])
    for _ in range(10):
        call()
    assert len(sent) == 20


def test_plain_sql_forces_what_policies_obey(stores: list[PostgresStorage], pg_dsn: str) -> None:
    """rc_force from another client opens the breaker for the policy's next call."""
    policy, events = make(stores[0], cooldown=timedelta(minutes=1))
    call = flaky(policy)
    assert call() == "ok"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        forced = conn.execute("SELECT * FROM rc_force('payments', 'OPEN', 'test')").fetchone()
        assert forced is not None
        assert forced[0] == "OPEN"
        permitted = conn.execute(
            "SELECT permitted FROM rc_try_acquire('payments', 'test')"
        ).fetchone()
        assert permitted == (False,)
    with pytest.raises(ProtectedCallError):
        call()
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    policy.status = CircuitState.CLOSED
    assert call() == "ok"


def test_sql_callers_share_the_policy_configuration(
    stores: list[PostgresStorage], pg_dsn: str
) -> None:
    """rc_configure stored the policy's limits, so plain rc_record calls trip at the same ratio."""
    make(stores[0], failure_limit=Fraction(1, 2), window_size=4, cooldown=timedelta(hours=1))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        states = [
            conn.execute("SELECT state FROM rc_record('payments', %s, 'test')", (ok,)).fetchone()
            for ok in (True, True, False, False)
        ]
    assert [s[0] for s in states if s] == ["CLOSED", "CLOSED", "CLOSED", "OPEN"]


def test_half_open_trials_are_capped_across_clients(stores: list[PostgresStorage]) -> None:
    """With 2 outcomes needed, two clients together get two trial permits, not more."""
    first, _ = make(stores[0], success_limit=Fraction(1, 2), cooldown=timedelta(0))
    second, _ = make(stores[1], success_limit=Fraction(1, 2), cooldown=timedelta(0))
    first.status = CircuitState.OPEN
    grants = [first._breaker.acquire(), second._breaker.acquire(), second._breaker.acquire()]
    assert [g.permitted for g in grants] == [True, True, False]
    assert grants[2].state is CircuitState.HALF_OPEN
    assert grants[2].retry_after is not None


def test_late_outcomes_of_an_older_generation_are_ignored(
    stores: list[PostgresStorage], pg_dsn: str
) -> None:
    """An outcome admitted before a forced transition moves only the lifetime counters."""
    policy, _ = make(stores[0], failure_limit=Fraction(1, 1), cooldown=timedelta(hours=1))
    breaker = policy._breaker
    admission = breaker.acquire()
    policy.status = CircuitState.CLOSED  # a new generation begins
    breaker.record(False, admission.generation)
    state, generation, log, _, _, failures = row(pg_dsn, "payments")
    assert (state, generation, log, failures) == ("CLOSED", 1, [], 1)


async def test_async_policies_share_the_breaker(stores: list[PostgresStorage], pg_dsn: str) -> None:
    """Coroutines use an async pool; their outcomes land in the same row as sync ones."""
    policy, events = make(
        stores[0], failure_limit=Fraction(1, 2), window_size=10, cooldown=timedelta(minutes=1)
    )

    @policy
    async def call(ok: bool) -> str:
        await asyncio.sleep(0)
        if not ok:
            raise TimeoutError("slow")
        return "ok"

    results = await asyncio.gather(*(call(True) for _ in range(20)))
    assert results == ["ok"] * 20
    for _ in range(5):
        with pytest.raises(TimeoutError):
            await call(False)
    with pytest.raises(ProtectedCallError):
        await call(True)
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    _, _, _, _, successes, failures = row(pg_dsn, "payments")
    assert (successes, failures) == (20, 5)
    await stores[0].aclose()


def test_status_log_and_admin_api(stores: list[PostgresStorage]) -> None:
    """status, execution_log, get_state and set_state read and write the shared row."""
    policy, events = make(stores[0], failure_limit=Fraction(1, 3), cooldown=timedelta(minutes=1))
    call = flaky(policy)
    call()
    call()
    assert list(policy.execution_log) == [True, True]
    assert policy.execution_log.is_full is False
    state = stores[1].get_state("payments")
    assert state is not None
    assert (state["state"], state["execution_log"]) == ("CLOSED", [True, True])
    stores[1].set_state("payments", "OPEN", 4, 0, [False])
    assert policy.status is CircuitState.OPEN
    assert events == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert stores[1].get_state("nobody") is None
    policy.reset()
    snap = policy.snapshot()
    assert (snap.state, snap.window, snap.successes, snap.failures) == (
        CircuitState.CLOSED,
        (),
        0,
        0,
    )


def test_create_storage_reads_the_environment(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RC_DB_DSN switches policies without a storage to one shared PostgreSQL store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RC_DB_DSN", pg_dsn)
    monkeypatch.setenv("RC_NAMESPACE", "envns")
    first = create_storage()
    assert isinstance(first, PostgresStorage)
    assert first is create_storage()
    assert first.namespace == "envns"
    policy = CircuitProtectorPolicy(resource_key="from_env")
    assert policy.storage is first
    assert policy.namespace == "envns"
    pg_module._shared.clear()
    first.close()


def test_seed_postgres_example_runs_unchanged(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The description's PostgreSQL example, configured by RC_DB_* in a .env file, shares state."""
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    host = str(info.get("host") or "localhost")
    # The test server's superuser: "postgres" unless the DSN names another ("test" in
    # the official image), with its password when the server demands one.
    user = info.get("user") or "postgres"
    lines = [f"RC_DB_HOST={host}", f"RC_DB_NAME={info['dbname']}", f"RC_DB_USER={user}"]
    if info.get("port"):
        lines.append(f"RC_DB_PORT={info['port']}")
    if info.get("password"):
        lines.append(f"RC_DB_PASSWORD={info['password']}")
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    for name in (
        "RC_DB_DSN",
        "RC_DB_HOST",
        "RC_DB_PORT",
        "RC_DB_NAME",
        "RC_DB_USER",
        "RC_DB_PASSWORD",
        "RC_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("resilient_circuit._settings._dotenv_loaded", False)
    namespace: dict[str, Any] = {}
    seed = Path(__file__).parent / "seed" / "07_postgres.py"
    try:
        exec(compile(seed.read_text(), str(seed), "exec"), namespace)
        assert isinstance(namespace["circuit_breaker"].storage, PostgresStorage)
        namespace["process_payment"]()
        state = namespace["circuit_breaker"].storage.get_state("payment_service")
        assert state is not None
        assert state["execution_log"] == [True]
    finally:
        for store in pg_module._shared.values():
            store.close()
        pg_module._shared.clear()
        for name in ("RC_DB_HOST", "RC_DB_PORT", "RC_DB_NAME", "RC_DB_USER"):
            monkeypatch.delenv(name, raising=False)
