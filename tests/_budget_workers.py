"""What each process of a retry-budget fleet runs (spawned, so it must be importable).

Each worker builds its own PostgresBudgetStore, budget and retry policy, as a separate
application process would, calls a dependency in a loop for a while and reports
its counts on a queue.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

from resilient_circuit import RetryBudget, RetryLimitReached, RetryWithBackoffPolicy
from resilient_circuit._budget_pg import PostgresBudgetStore

NAMESPACE = "fleet"
RATIO = Fraction(1, 5)
FLOOR = 5
MAX_RETRIES = 3
#: A healthy dependency fails one call in this many (well under the ratio).
HEALTHY_FAILURE_EVERY = 20


def call_dependency(
    dsn: str, budget_name: str, dead: bool, seconds: float, start: Any, results: Any
) -> None:
    """Call a dead (or healthy) dependency through a budgeted retry for ``seconds``."""
    store = PostgresBudgetStore(dsn)
    budget = RetryBudget(budget_name, RATIO, FLOOR, namespace=NAMESPACE, store=store)
    attempts = 0

    def dependency() -> str:
        nonlocal attempts
        attempts += 1
        if dead or attempts % HEALTHY_FAILURE_EVERY == 0:
            raise ConnectionError("dependency failed")
        return "ok"

    retrying = RetryWithBackoffPolicy(max_retries=MAX_RETRIES, budget=budget)(dependency)
    first = gave_up = other = 0
    try:
        start.wait(60)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            first += 1
            try:
                retrying()
            except RetryLimitReached as exc:
                gave_up += 1
                if not isinstance(exc.__cause__, ConnectionError):
                    other += 1
        budget.flush()
    finally:
        store.close()
    results.put({"first": first, "attempts": attempts, "gave_up": gave_up, "other": other})
