"""Hostile and invalid input through the Python layer, against a real PostgreSQL.

tests/test_sql_functions.py drives the same cases through plain SQL; here the keys,
namespaces, schema names, configurations and states come through policies and
stores, and every refusal must leave each row exactly as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError, _installer
from resilient_circuit.cli.connect import connect
from resilient_circuit.storage import PostgresStorage
from tests._helpers import flaky

if TYPE_CHECKING:
    from tests.conftest import PgRole

HOSTILE = [
    "O'Brien",
    "semi;colon'); DROP TABLE rc_circuit_breakers; --",
    'double "quoted" \\ back\\slash',
    "ключ 🔑 键 ñ",
    "%s %(name)s $1 $$ {} {0}",
    "  spaced  \t\n",
    "k" * 255,
    "🔑" * 255,  # 255 characters, 1020 bytes
]


class Failed(Exception):
    """The protected function's own failure."""


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[Callable[..., PostgresStorage]]:
    """Stores closed after the test."""
    made: list[PostgresStorage] = []

    def make(dsn: str = pg_dsn, **kwargs: Any) -> PostgresStorage:
        store = PostgresStorage(dsn, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def table(dsn: str, schema: str = "public") -> list[tuple[Any, ...]]:
    """Every row and every column, in a stable order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY resource_key, namespace").format(
                sql.Identifier(schema, "rc_circuit_breakers")
            )
        ).fetchall()


def with_victim(dsn: str) -> None:
    """A breaker that hostile input must never touch."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM rc_configure('victim', 'default', 2, 3)")
        conn.execute("SELECT * FROM rc_record_many('victim', 'default', ARRAY[true, false])")


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_keys_and_namespaces_are_only_data(
    pg_dsn: str, stores: Callable[..., PostgresStorage], name: str
) -> None:
    """A hostile key in a hostile namespace trips, rejects, resets; other rows stay as they were."""
    with_victim(pg_dsn)
    victim = table(pg_dsn)
    store = stores(namespace=name)
    policy = CircuitProtectorPolicy(
        resource_key=name, storage=store, failure_limit=Fraction(1, 2), cooldown=timedelta(hours=1)
    )
    call = flaky(policy, Failed)
    assert call(True) == "ok"
    with pytest.raises(Failed):
        call(False)
    with pytest.raises(ProtectedCallError) as rejected:
        call(True)
    assert rejected.value.resource_key == name
    assert policy.status is CircuitState.OPEN
    assert list(policy.execution_log) == [True, False]
    state = store.get_state(name)
    assert state is not None
    assert (state["state"], state["execution_log"]) == ("OPEN", [True, False])

    # Plain SQL finds the very same row under the very same names.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT resource_key, namespace, state, successes, failures FROM rc_status(%s, %s)",
            (name, name),
        ).fetchone()
        assert found == (name, name, "OPEN", 1, 1)
        # A record from plain SQL while OPEN only counts.
        assert conn.execute("SELECT * FROM rc_record(%s, true, %s)", (name, name)).fetchone() == (
            "OPEN",
            1,
        )
    after = store.get_state(name)
    assert after is not None
    assert (after["state"], after["execution_log"]) == ("OPEN", [True, False])
    policy.status = CircuitState.CLOSED
    assert call(True) == "ok"
    policy.reset()
    store.set_state(name, "HALF_OPEN", 0, 0, [False])
    assert policy.status is CircuitState.HALF_OPEN

    rows = table(pg_dsn)
    assert [r for r in rows if r[0] == "victim"] == victim
    assert {(r[0], r[1]) for r in rows} == {("victim", "default"), (name, name)}


def test_invalid_names_are_refused_before_anything_is_written(
    pg_dsn: str, stores: Callable[..., PostgresStorage]
) -> None:
    """Empty, 256-character and NUL-bearing keys or namespaces raise ValueError naming them."""
    with_victim(pg_dsn)
    before = table(pg_dsn)
    store = stores(namespace="ok")
    for key, namespace, parameter in [
        ("", None, "resource_key"),
        ("k" * 256, None, "resource_key"),
        ("🔑" * 256, None, "resource_key"),
        ("nul\x00key", None, "resource_key"),
        ("svc", "", "namespace"),
        ("svc", "n" * 256, "namespace"),
        ("svc", "nul\x00ns", "namespace"),
    ]:
        with pytest.raises(ValueError, match=parameter):
            CircuitProtectorPolicy(resource_key=key, namespace=namespace, storage=store)
    for bad_namespace in ("", "n" * 256):
        with pytest.raises(ValueError, match="namespace"):
            PostgresStorage(pg_dsn, namespace=bad_namespace)
    with pytest.raises(ValueError, match="resource_key"):
        store.set_state("k" * 256, "OPEN", 0, 0)
    with pytest.raises(TypeError, match="resource_key"):
        CircuitProtectorPolicy(resource_key=42, storage=store)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resource_key"):
        store.get_state("k" * 256)
    assert table(pg_dsn) == before


# rc_configure's parameters, named as the store's statement names them (p_key is key).
CONFIGURE_PARAMETERS = (
    "key",
    "namespace",
    "failure_limit_num",
    "failure_limit_den",
    "window_size",
    "success_limit_num",
    "success_limit_den",
    "cooldown",
    "half_open_timeout",
)


# The parameters after those, left at their defaults (the options that are unused).
UNUSED_OPTIONS = {
    "window_duration": None,
    "minimum_calls": None,
    "slow_call_duration": None,
    "slow_call_limit_num": None,
    "slow_call_limit_den": None,
    "cooldown_factor": 1.0,
    "max_cooldown": None,
    "restore": False,
}


def configure_args(*values: Any) -> dict[str, Any]:
    return {**dict(zip(CONFIGURE_PARAMETERS, values, strict=True)), **UNUSED_OPTIONS}


# (parameters after key and namespace, the parameter the message must name)
BAD_CONFIGURATIONS = [
    ((3, 2, None, None, None, timedelta(0), timedelta(seconds=10)), "p_failure_limit_num"),
    ((0, 1, None, None, None, timedelta(0), timedelta(seconds=10)), "p_failure_limit_num"),
    ((1, 0, None, None, None, timedelta(0), timedelta(seconds=10)), "p_failure_limit_den"),
    ((1, 2, 0, None, None, timedelta(0), timedelta(seconds=10)), "p_window_size"),
    ((1, 2, 10_001, None, None, timedelta(0), timedelta(seconds=10)), "p_window_size"),
    ((1, 2, None, 3, 2, timedelta(0), timedelta(seconds=10)), "p_success_limit_num"),
    ((1, 2, None, 1, None, timedelta(0), timedelta(seconds=10)), "p_success_limit_den"),
    ((1, 2, None, None, None, timedelta(seconds=-1), timedelta(seconds=10)), "p_cooldown"),
    ((1, 2, None, None, None, timedelta(0), timedelta(0)), "p_half_open_timeout"),
]


@pytest.mark.parametrize(("params", "parameter"), BAD_CONFIGURATIONS)
def test_invalid_configuration_reaching_rc_configure_is_a_value_error_not_an_outage(
    pg_dsn: str,
    stores: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
    params: tuple[Any, ...],
    parameter: str,
) -> None:
    """rc_configure's refusal (SQLSTATE 22023) reaches Python as ValueError; nothing changes."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    store = stores(namespace="default")
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, failure_limit=Fraction(2, 3))
    call = flaky(policy, Failed)
    assert call(True) == "ok"
    before = table(pg_dsn)
    with pytest.raises(ValueError, match=parameter):
        store.fetch(None, store.statements.configure, configure_args("svc", "default", *params))
    assert table(pg_dsn) == before
    # A caller's mistake is not an outage: nothing logged, no backoff, the store works.
    assert [r for r in caplog.records if r.name.startswith("resilient_circuit")] == []
    assert store.outage.down_since is None
    assert call(True) == "ok"
    assert list(policy.execution_log) == [True, True]


def test_unknown_states_are_refused_in_python_and_in_sql(
    pg_dsn: str, stores: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """Forcing 'AJAR', '' or None fails with a message naming the state; the row is untouched."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    store = stores(namespace="default")
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, cooldown=timedelta(hours=1))
    with pytest.raises(Failed):
        flaky(policy, Failed)(False)
    before = table(pg_dsn)
    for bad in ("AJAR", "", "OPEN; DROP TABLE rc_circuit_breakers"):
        with pytest.raises(ValueError, match="status"):
            policy.status = bad
        with pytest.raises(ValueError, match="state"):
            store.set_state("svc", bad, 0, 0)
        with pytest.raises(ValueError, match="p_state"):
            store.fetch(
                None,
                store.statements.force,
                {"key": "svc", "state": bad, "namespace": "default", "hold": False},
            )
    with pytest.raises(TypeError, match="status"):
        policy.status = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="p_state"):
        store.fetch(
            None,
            store.statements.force,
            {"key": "svc", "state": None, "namespace": "default", "hold": False},
        )
    assert table(pg_dsn) == before
    assert [r for r in caplog.records if r.name.startswith("resilient_circuit")] == []
    assert policy.status is CircuitState.OPEN


def test_hostile_schema_name_through_the_store(
    pg_empty_dsn: str, stores: Callable[..., PostgresStorage]
) -> None:
    """Installed into a schema named like an injection, the store finds and uses it."""
    schema = 'we"ird; DROP SCHEMA public CASCADE; --'
    with connect(pg_empty_dsn) as conn:
        _installer.install(conn, schema=schema)
    store = stores(pg_empty_dsn, namespace="x", schema=schema)
    policy = CircuitProtectorPolicy(resource_key="k'ey", storage=store)
    with pytest.raises(Failed):
        flaky(policy, Failed)(False)
    assert policy.status is CircuitState.OPEN
    rows = table(pg_empty_dsn, schema)
    assert [(r[0], r[1], r[2]) for r in rows] == [("k'ey", "x", "OPEN")]
    with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('public') IS NOT NULL").fetchone() == (True,)


@pytest.fixture
def app_dsn(pg_dsn: str, pg_role: Callable[[], PgRole]) -> str:
    """A DSN logging in as a role set up by ``pg-setup --app-role`` (EXECUTE only)."""
    role = pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=role)
    return role.dsn(pg_dsn)


def test_an_execute_only_role_runs_the_breaker_but_cannot_touch_the_table(
    pg_dsn: str, app_dsn: str, stores: Callable[..., PostgresStorage]
) -> None:
    """The app role configures, calls, trips, forces and resets; UPDATE/DELETE are refused."""
    with_victim(pg_dsn)
    store = stores(app_dsn, namespace="default")
    policy = CircuitProtectorPolicy(
        resource_key="svc", storage=store, failure_limit=Fraction(1, 2), cooldown=timedelta(hours=1)
    )
    call = flaky(policy, Failed)
    assert call(True) == "ok"
    with pytest.raises(Failed):
        call(False)
    with pytest.raises(ProtectedCallError):
        call(True)
    policy.status = CircuitState.CLOSED
    assert call(True) == "ok"
    policy.reset()
    assert store.outage.down_since is None
    before = table(pg_dsn)
    assert [(r[0], r[2]) for r in before] == [("svc", "CLOSED"), ("victim", "CLOSED")]

    with psycopg.connect(app_dsn, autocommit=True) as conn:
        for statement in (
            "UPDATE rc_circuit_breakers SET state = 'OPEN'",
            "DELETE FROM rc_circuit_breakers",
            "INSERT INTO rc_circuit_breakers (resource_key) VALUES ('intruder')",
            "TRUNCATE rc_circuit_breakers",
            "SELECT * FROM rc_force_at('svc', 'OPEN', 'default', now())",
            "SELECT * FROM rc_record_at('svc', false, 'default', NULL, now())",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # What the role may read: the status view and rc_status.
        assert conn.execute(
            "SELECT state FROM rc_circuit_breaker_status WHERE resource_key = 'svc'"
        ).fetchone() == ("CLOSED",)
    assert table(pg_dsn) == before


def test_an_execute_only_role_reads_status_and_execution_log(
    app_dsn: str, stores: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """The app role reads the breaker's state and window without an outage being declared."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    store = stores(app_dsn, namespace="default")
    policy = CircuitProtectorPolicy(resource_key="svc", storage=store, cooldown=timedelta(hours=1))
    with pytest.raises(Failed):
        flaky(policy, Failed)(False)
    assert list(policy.execution_log) == [False]
    assert policy.status is CircuitState.OPEN
    snap = policy.snapshot()
    assert (snap.failures, snap.permits) == (1, 0)
    assert snap.open_remaining is not None
    assert timedelta(minutes=59) < snap.open_remaining <= timedelta(hours=1)
    state = store.get_state("svc")
    assert state is not None
    assert (state["state"], state["execution_log"]) == ("OPEN", [False])
    assert [r for r in caplog.records if r.name.startswith("resilient_circuit")] == []
    assert store.outage.down_since is None
