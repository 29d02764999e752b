"""The breaker examples of resilient_circuit 0.4.5's description run unchanged on every store.

The snippets in tests/seed/ are the description's code, verbatim, run top to bottom in
one namespace. With no database configured their policies live in memory; with
RC_DB_* in a ``.env`` file, as the description's PostgreSQL section says, every one of
them lives in PostgreSQL.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

import resilient_circuit
from resilient_circuit import CircuitState, ProtectedCallError
from resilient_circuit.storage import InMemoryStorage, PostgresStorage
from tests._helpers import dotenv_settings, forget_shared_storages, run_seed_snippets


def write_dotenv(path: Path, dsn: str, namespace: str) -> None:
    """Point RC_DB_HOST/PORT/NAME/USER/PASSWORD at the database of ``dsn``, in ``namespace``."""
    info = conninfo_to_dict(dsn)
    lines = [
        f"RC_NAMESPACE={namespace}",
        f"RC_DB_HOST={info.get('host') or 'localhost'}",
        f"RC_DB_NAME={info['dbname']}",
        f"RC_DB_USER={info.get('user') or 'postgres'}",
    ]
    if info.get("port"):
        lines.append(f"RC_DB_PORT={info['port']}")
    if info.get("password"):
        lines.append(f"RC_DB_PASSWORD={info['password']}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def page(
    contract_dsn: str | None,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[dict[str, Any]]:
    """The page's namespace, every snippet executed against the store of the run."""
    monkeypatch.chdir(tmp_path)
    with dotenv_settings(monkeypatch):
        if contract_dsn is not None:
            write_dotenv(tmp_path / ".env", contract_dsn, namespace)
        try:
            page = run_seed_snippets()
            page["__printed__"] = capsys.readouterr().out
            yield page
        finally:
            forget_shared_storages()


def test_every_breaker_lives_in_the_configured_store(page: dict[str, Any], store_kind: str) -> None:
    """Policies built without a storage use PostgreSQL when RC_DB_* is set, memory otherwise;
    a storage given explicitly wins."""
    expected = PostgresStorage if store_kind == "postgres" else InMemoryStorage
    policies = {
        (snippet, name): value
        for snippet, names in page["__bound__"].items()
        for name, value in names.items()
        if isinstance(value, resilient_circuit.CircuitProtectorPolicy)
    }
    explicit = ("08_fallback.py", "circuit_breaker")
    assert isinstance(policies.pop(explicit).storage, InMemoryStorage)
    assert len(policies) == 4
    for policy in policies.values():
        assert isinstance(policy.storage, expected)
    (_, combined) = page["safety_net"].policies
    assert isinstance(combined.storage, expected)


def test_all_snippets_run_in_order(page: dict[str, Any]) -> None:
    """The snippets execute, and the status example prints the status and the log."""
    out = page["__printed__"]
    assert "Current status: CLOSED" in out
    assert "Execution log: []" in out
    assert page["protector"].status is CircuitState.CLOSED
    assert list(page["protector"].execution_log) == [True]


def test_basic_protector_trips_at_three_of_ten(page: dict[str, Any]) -> None:
    """The 3-in-10 protector opens once ten calls hold three failures, then blocks calls."""
    random.seed(7)
    basic = page["unreliable_service_call"]
    outcomes: list[bool] = []
    with pytest.raises(ProtectedCallError):
        for _ in range(100):
            try:
                outcomes.append(basic() == "Success!")
            except ProtectedCallError:
                raise
            except Exception as exc:
                assert str(exc) == "Service temporarily unavailable"
                outcomes.append(False)
    assert len(outcomes) >= 10
    last_ten = outcomes[-10:]
    assert last_ten.count(False) >= 3


def test_customized_protector_filters_and_reports(
    page: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only connection/timeout errors count; the listener prints the transition."""
    protector = page["custom_protector"]
    assert protector.success_limit == 1
    assert (
        protector.failure_limit
        == resilient_circuit.CircuitProtectorPolicy(
            failure_limit=page["Fraction"](3, 10), storage=InMemoryStorage()
        ).failure_limit
    )
    protector.status = CircuitState.OPEN
    assert "Circuit protector changed status: CLOSED -> OPEN" in capsys.readouterr().out
    with pytest.raises(ProtectedCallError):
        page["monitored_service_call"]()


def test_postgres_example_runs_unchanged(page: dict[str, Any]) -> None:
    """The description's PostgreSQL example records its call in the configured store."""
    breaker = page["__bound__"]["07_postgres.py"]["circuit_breaker"]
    page["process_payment"]()
    state = breaker.storage.get_state("payment_service")
    assert state is not None
    assert (state["state"], state["execution_log"]) == ("CLOSED", [True])
