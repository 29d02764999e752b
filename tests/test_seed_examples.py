"""Every example of resilient_circuit 0.4.5's published description runs unchanged.

The snippets in tests/seed/ are the description's code, verbatim. The page reads
top to bottom, so later snippets use names (Fraction, timedelta, CircuitState)
that earlier ones imported: they run in order in one namespace, as a reader would.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import resilient_circuit
from resilient_circuit import CircuitState, ProtectedCallError, RetryLimitReached

SEED = Path(__file__).parent / "seed"
IN_MEMORY = [p for p in sorted(SEED.glob("*.py")) if p.name != "07_postgres.py"]


@pytest.fixture
def page(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """A namespace with every in-memory snippet executed, and no database configured."""
    for name in ("RC_DB_DSN", "RC_DB_HOST", "RC_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "seed_page"}
    for path in IN_MEMORY:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    namespace["__printed__"] = capsys.readouterr().out
    return namespace


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


def test_retry_example_retries_then_succeeds_or_gives_up(
    page: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exponential retry runs up to four attempts, waiting about 1, 2 and 4 seconds."""
    waits: list[float] = []
    policy = page["retry_policy"]
    monkeypatch.setattr(policy, "_sleep", waits.append)
    random.seed(3)
    outcomes = []
    for _ in range(20):
        try:
            outcomes.append(page["unreliable_database_operation"]())
        except RetryLimitReached as exc:
            assert isinstance(exc.__cause__, ConnectionError)
            outcomes.append(None)
    assert "Database operation completed" in outcomes
    assert waits
    assert all(0.9 <= w <= 10 for w in waits)
    assert max(waits) >= 1.8


def test_customized_protector_filters_and_reports(
    page: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only connection/timeout errors count; the listener prints the transition."""
    protector = page["custom_protector"]
    assert protector.success_limit == 1
    assert (
        protector.failure_limit
        == resilient_circuit.CircuitProtectorPolicy(
            failure_limit=page["Fraction"](3, 10)
        ).failure_limit
    )
    protector.status = CircuitState.OPEN
    assert "Circuit protector changed status: CLOSED -> OPEN" in capsys.readouterr().out
    with pytest.raises(ProtectedCallError):
        page["monitored_service_call"]()


def test_fixed_delay_and_fallback_storage(page: dict[str, Any]) -> None:
    """FixedDelay waits two seconds each time; the fallback policies use memory storage."""
    assert page["constant_backoff"].for_attempt(1) == 2.0
    assert page["constant_backoff"].for_attempt(5) == 2.0
    assert page["service_with_constant_retry"]() is None
    from resilient_circuit.storage import InMemoryStorage

    assert isinstance(page["circuit_breaker"].storage, InMemoryStorage)
    assert page["circuit_breaker"].resource_key == "my_service"


def test_combined_policies_are_built(page: dict[str, Any]) -> None:
    """SafetyNet lists the retry outermost and decorates without calling the network."""
    retry, breaker = page["safety_net"].policies
    assert isinstance(retry, resilient_circuit.RetryWithBackoffPolicy)
    assert isinstance(breaker, resilient_circuit.CircuitProtectorPolicy)
    assert callable(page["resilient_external_api_call"])
