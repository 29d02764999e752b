"""Drop-in compatibility: the names and options of 0.8.6, and what 0.4.5 users' tests do.

delete_state and set_state's open_until, the same in every store, are in
tests/contract/test_admin.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError, _settings
from resilient_circuit._dsn import Dsn
from resilient_circuit._machine import Config
from resilient_circuit.circuit_breaker import DEFAULT_ADMISSION_REFRESH_INTERVAL
from resilient_circuit.exceptions import ProtectionException, SchemaNotReady
from resilient_circuit.storage import (
    CircuitBreakerStorage,
    InMemoryStorage,
    PostgresStorage,
    StorageError,
    create_storage,
)
from resilient_circuit.storage import postgres as pg_module

CONFIG = Config.build(cooldown=timedelta(minutes=1), window_size=2)


@pytest.fixture
def pg_store(pg_dsn: str) -> Iterator[PostgresStorage]:
    store = PostgresStorage(pg_dsn)
    yield store
    store.close()


def fail_until_open(policy: CircuitProtectorPolicy) -> None:
    @policy
    def fail() -> None:
        raise RuntimeError("down")

    for _ in range(policy.window_size + 1):
        try:
            fail()
        except ProtectedCallError:
            return
        except RuntimeError:
            pass
    raise AssertionError("the breaker did not open")


# -- admission_refresh_interval ------------------------------------------------------


def test_default_admission_refresh_interval_is_0_8_6s() -> None:
    """circuit_breaker.DEFAULT_ADMISSION_REFRESH_INTERVAL is one second, as in 0.8.6."""
    assert timedelta(seconds=1) == DEFAULT_ADMISSION_REFRESH_INTERVAL


@pytest.mark.parametrize(
    ("interval", "mode"),
    [
        (None, "strict"),
        (timedelta(0), "strict"),
        (timedelta(milliseconds=200), "cached"),
        (DEFAULT_ADMISSION_REFRESH_INTERVAL, "cached"),
    ],
)
def test_admission_refresh_interval_selects_the_admission_mode(
    interval: timedelta | None, mode: str
) -> None:
    """A positive interval is cached admission; zero (read every call) or none is strict."""
    policy = CircuitProtectorPolicy(storage=InMemoryStorage(), admission_refresh_interval=interval)
    assert policy.admission == mode
    assert policy.admission_refresh_interval == interval


def test_admission_refresh_interval_is_validated() -> None:
    """A negative interval, one neither a timedelta nor a number of seconds, or zero with
    cached admission, is refused by name."""
    with pytest.raises(ValueError, match="admission_refresh_interval"):
        CircuitProtectorPolicy(admission_refresh_interval=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="admission_refresh_interval"):
        CircuitProtectorPolicy(admission_refresh_interval=-1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="admission_refresh_interval"):
        CircuitProtectorPolicy(admission_refresh_interval="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="admission_refresh_interval"):
        CircuitProtectorPolicy(admission="cached", admission_refresh_interval=timedelta(0))


def test_admission_refresh_interval_in_postgres_uses_cached_admission(
    pg_store: PostgresStorage,
) -> None:
    """In PostgreSQL a refresh interval admits from cached verdicts kept honest by LISTEN."""
    policy = CircuitProtectorPolicy(
        resource_key="interval",
        storage=pg_store,
        admission_refresh_interval=DEFAULT_ADMISSION_REFRESH_INTERVAL,
    )
    assert policy.admission == "cached"
    assert pg_store.wait_listening(10)

    @policy
    def ok() -> str:
        return "ok"

    assert ok() == "ok"
    assert pg_store.breakers()[0].cached


# -- InMemoryStorage(max_entries=...) --------------------------------------------------


def test_max_entries_evicts_the_least_recently_used() -> None:
    """Beyond max_entries the least recently bound or administered breaker is forgotten."""
    storage = InMemoryStorage(max_entries=2)
    for key in ("a", "b"):
        storage.set_state(key, "CLOSED", 0, 0)
    assert storage.get_state("a") is not None  # "a" is now the most recently used
    storage.set_state("c", "CLOSED", 0, 0)
    assert storage.get_state("b") is None
    assert storage.get_state("a") is not None
    assert storage.get_state("c") is not None


def test_max_entries_never_evicts_a_live_open_breaker() -> None:
    """An OPEN breaker still cooling down stays, over the bound, until its cooldown ends."""
    now = [0]
    storage = InMemoryStorage(max_entries=1, clock=lambda: now[0])
    tripped = storage.breaker("tripped", "default", CONFIG)
    tripped.force(CircuitState.OPEN)
    del tripped
    for key in ("x", "y", "z"):
        storage.set_state(key, "CLOSED", 0, 0)
    found = storage.get_state("tripped")
    assert found is not None
    assert found["state"] == "OPEN"
    now[0] += 2 * 60 * 10**9  # past the cooldown: an ordinary entry again
    for key in ("p", "q", "r"):
        storage.set_state(key, "CLOSED", 0, 0)
    assert storage.get_state("tripped") is None


def test_max_entries_never_splits_a_breaker_a_policy_holds() -> None:
    """A policy's breaker evicted from the bound is found again: one key, one breaker."""
    storage = InMemoryStorage(max_entries=1)
    first = CircuitProtectorPolicy(
        resource_key="held", storage=storage, window_size=2, cooldown=timedelta(minutes=1)
    )
    for key in ("x", "y"):
        storage.set_state(key, "CLOSED", 0, 0)
    fail_until_open(first)
    # A second policy of the same breaker (same configuration: two would be a ValueError).
    second = CircuitProtectorPolicy(
        resource_key="held", storage=storage, window_size=2, cooldown=timedelta(minutes=1)
    )
    assert second.status is CircuitState.OPEN
    state = storage.get_state("held")
    assert state is not None
    assert state["state"] == "OPEN"


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), ("8", TypeError), (True, TypeError)])
def test_max_entries_is_validated(value: Any, error: type[Exception]) -> None:
    """max_entries must be a positive int or None, named in the error."""
    with pytest.raises(error, match="max_entries"):
        InMemoryStorage(max_entries=value)


# -- delete_state and backend_name --------------------------------------------------


def test_backend_name_says_where_state_lives(pg_store: PostgresStorage) -> None:
    """backend_name is "in-memory", "postgres", or "unknown" for another store."""
    assert InMemoryStorage().backend_name == "in-memory"
    assert pg_store.backend_name == "postgres"
    assert CircuitBreakerStorage.backend_name == "unknown"


def test_a_store_that_cannot_forget_answers_false() -> None:
    """The base class's delete_state is 0.8.6's safe default for other stores: False."""

    class Other(InMemoryStorage):
        delete_state = CircuitBreakerStorage.delete_state  # type: ignore[assignment]

    assert Other().delete_state("x") is False


def test_schema_not_ready_is_a_protection_exception() -> None:
    """exceptions.SchemaNotReady exists, under ProtectionException."""
    assert issubclass(SchemaNotReady, ProtectionException)


# -- environment --------------------------------------------------------------------


def test_ssl_variables_become_libpq_parameters() -> None:
    """RC_DB_SSLMODE/SSLROOTCERT/SSLCERT/SSLKEY join the conninfo built from RC_DB_*."""
    env = {
        "RC_DB_HOST": "db.example",
        "RC_DB_PASSWORD": "pw",
        "RC_DB_SSLMODE": "verify-full",
        "RC_DB_SSLROOTCERT": "/etc/ssl/root.pem",
        "RC_DB_SSLCERT": "/etc/tls/client.crt",
        "RC_DB_SSLKEY": "/etc/tls/client.key",
    }
    dsn = _settings.database_dsn(env)
    assert dsn is not None
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    assert info["sslmode"] == "verify-full"
    assert info["sslrootcert"] == "/etc/ssl/root.pem"
    assert info["sslcert"] == "/etc/tls/client.crt"
    assert info["sslkey"] == "/etc/tls/client.key"
    assert info["host"] == "db.example"
    plain = _settings.database_dsn({"RC_DB_HOST": "db.example"})
    assert plain is not None
    assert "ssl" not in plain
    given = "postgresql://u@h/db?sslmode=require"
    assert _settings.database_dsn({"RC_DB_DSN": given, "RC_DB_SSLMODE": "disable"}) == given


@pytest.mark.parametrize(
    ("variable", "value"),
    [("RC_DB_PORT", "abc"), ("RC_DB_PORT", "70000"), ("RC_DB_SSLMODE", "sometimes")],
)
def test_a_bad_connection_variable_is_refused_naming_it(variable: str, value: str) -> None:
    """A bad RC_DB_PORT or RC_DB_SSLMODE raises ValueError naming that variable, not `dsn`."""
    env = {"RC_DB_HOST": "db.example", "RC_DB_PASSWORD": "S3cret", variable: value}
    with pytest.raises(ValueError, match=f"^`{variable}` must be") as caught:
        _settings.database_dsn(env)
    assert "S3cret" not in str(caught.value)


def test_the_environment_accepts_the_sslmodes_a_dsn_accepts() -> None:
    """RC_DB_SSLMODE is checked against the same modes as a DSN's sslmode."""
    from resilient_circuit import _dsn

    assert _settings._SSLMODES == _dsn.SSLMODES


def test_a_port_list_for_several_hosts_is_accepted() -> None:
    """RC_DB_PORT may list one port per host, as libpq allows."""
    env = {"RC_DB_HOST": "a,b", "RC_DB_PORT": "5432,5433"}
    dsn = _settings.database_dsn(env)
    assert dsn is not None
    assert psycopg.conninfo.conninfo_to_dict(dsn)["port"] == "5432,5433"


def test_boolean_variables_are_read_strictly() -> None:
    """RC_DB_STRICT, RC_DB_AUTO_CREATE and RC_DB_PREPARED_STATEMENTS: 1/0 and friends."""
    assert _settings.strict_storage({"RC_DB_STRICT": "1"}) is True
    assert _settings.strict_storage({}) is False
    assert _settings.auto_create({"RC_DB_AUTO_CREATE": "true"}) is True
    assert _settings.auto_create({"RC_DB_AUTO_CREATE": "0"}) is False
    assert _settings.prepared_statements({"RC_DB_PREPARED_STATEMENTS": "0"}) is False
    assert _settings.prepared_statements({"RC_DB_PREPARED_STATEMENTS": "auto"}) is None
    assert _settings.listen_dsn({"RC_DB_LISTEN_DSN": " host=db "}) == "host=db"
    with pytest.raises(ValueError, match="RC_DB_STRICT"):
        _settings.strict_storage({"RC_DB_STRICT": "maybe"})


def test_rc_db_strict_makes_an_unusable_database_an_error_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With RC_DB_STRICT=1 create_storage tries the database and raises; without, it defers."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RC_DB_DSN", "host=127.0.0.1 port=1 dbname=nowhere user=nobody")
    monkeypatch.setenv("RC_NAMESPACE", "strict_env")
    try:
        deferred = create_storage()
        assert isinstance(deferred, PostgresStorage)
        pg_module._shared.clear()
        deferred.close()
        monkeypatch.setenv("RC_DB_STRICT", "1")
        with pytest.raises(StorageError):
            create_storage()
    finally:
        for store in pg_module._shared.values():
            store.close()
        pg_module._shared.clear()


def test_environment_configures_prepared_statements_and_listen_dsn(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RC_DB_PREPARED_STATEMENTS=0 turns preparing off; RC_DB_LISTEN_DSN is the LISTEN target."""
    monkeypatch.setenv("RC_DB_PREPARED_STATEMENTS", "0")
    monkeypatch.setenv("RC_DB_LISTEN_DSN", pg_dsn)
    store = PostgresStorage(pg_dsn)
    try:
        assert store.prepared_statements is False
        # Shown with any password masked; the target itself is the one given.
        assert store.listen_dsn == str(Dsn(pg_dsn))
        target = store._listen_target()
        assert target is not None
        assert (target.conninfo, target.password) == (Dsn(pg_dsn).conninfo, Dsn(pg_dsn).password)
        store.get_state("warm")
        with store._get_connection() as conn:
            assert conn.prepare_threshold is None
    finally:
        store.close()


def test_direct_connections_prepare_and_carry_the_timeouts(pg_dsn: str) -> None:
    """Connected directly: timeouts are session settings, not startup options; prepared."""
    store = PostgresStorage(pg_dsn, statement_timeout=1.5)
    try:
        with store._get_connection() as conn:
            assert conn.prepare_threshold is not None
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("1500ms",)
            assert "options" not in store._pools.connect_kwargs()
    finally:
        store.close()


# -- what 0.4.5 users' own tests do -------------------------------------------------


def test_seed_persistence_tests_get_a_connection_from_the_store(pg_store: PostgresStorage) -> None:
    """0.4.5's persistence tests clean up through ``storage._get_connection()``."""
    pg_store.set_state("test_key_store_retrieve", "OPEN", 5, 12345.67)
    result = pg_store.get_state("test_key_store_retrieve")
    assert result is not None
    assert abs(result["open_until"] - 12345.67) < 1.0
    with pg_store._get_connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM rc_circuit_breakers WHERE resource_key LIKE 'test_%'")
        conn.commit()
    assert pg_store.get_state("test_key_store_retrieve") is None


def test_policy_options_of_0_8_6_and_0_4_5_together() -> None:
    """0.8.6's options sit beside 0.4.5's: the defaults stay 0.4.5's."""
    policy = CircuitProtectorPolicy(
        storage=InMemoryStorage(max_entries=8192),
        failure_limit=Fraction(1, 2),
        admission_refresh_interval=DEFAULT_ADMISSION_REFRESH_INTERVAL,
    )
    assert policy.success_limit == Fraction(1, 1)
