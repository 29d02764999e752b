"""The retry and composition examples of resilient_circuit 0.4.5's description run unchanged.

The snippets in tests/seed/ are the description's code, verbatim, run top to bottom in
one namespace with no database configured. The breaker examples run on every store in
tests/contract/test_seed_examples.py.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import resilient_circuit
from resilient_circuit import RetryLimitReached
from tests._helpers import clear_database_settings, run_seed_snippets


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A namespace with every snippet executed, and no database configured."""
    clear_database_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)
    return run_seed_snippets()


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
