"""A process that makes first attempts through a budgeted retry and exits without flushing."""

from __future__ import annotations

import sys
from datetime import timedelta

from resilient_circuit import RetryBudget, RetryWithBackoffPolicy
from resilient_circuit.retry_budget import PostgresBudgetStore


def main(dsn: str, calls: int) -> None:
    # A long flush interval and fewer calls than a batch: only the exit hook can send them.
    budget = RetryBudget(
        "exit",
        namespace="exit",
        store=PostgresBudgetStore(dsn),
        flush_interval=timedelta(minutes=1),
    )

    @RetryWithBackoffPolicy(budget=budget)
    def call() -> None:
        pass

    for _ in range(calls):
        call()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
