"""A retry budget behaves the same in every budget store: shared by name, and a policy
gives up with the caller's own error once it is spent."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from resilient_circuit import RetryBudget, RetryLimitReached, RetryWithBackoffPolicy
from resilient_circuit.retry_budget import BudgetStore, InMemoryBudgetStore, PostgresBudgetStore


@pytest.fixture
def open_budget_store(contract_dsn: str | None) -> Iterator[Callable[[], BudgetStore]]:
    """A factory of handles on one set of budgets: one memory store, or one PostgreSQL
    connection each (as far as the database can tell, one process each)."""
    if contract_dsn is None:
        memory = InMemoryBudgetStore()
        yield lambda: memory
        return
    made: list[PostgresBudgetStore] = []

    def open_postgres() -> PostgresBudgetStore:
        made.append(PostgresBudgetStore(contract_dsn))
        return made[-1]

    yield open_postgres
    for store in made:
        store.close()


def test_budgets_of_one_name_share_their_tokens(
    open_budget_store: Callable[[], BudgetStore], namespace: str
) -> None:
    """What one budget deposits, another budget of the same name on another handle spends."""
    one, other = (
        RetryBudget("shared", namespace=namespace, min_per_second=0, store=open_budget_store())
        for _ in range(2)
    )
    for _ in range(16):  # 3.2 tokens: decay cannot take one away within half a second
        one.deposit()
    one.flush()
    assert [other.withdraw() for _ in range(4)] == [True, True, True, False]


def test_a_policy_gives_up_with_the_callers_error_when_the_budget_says_no(
    open_budget_store: Callable[[], BudgetStore], namespace: str
) -> None:
    """A new budget's one second of floor buys two retries; the third is refused."""
    budget = RetryBudget("sync", namespace=namespace, min_per_second=2, store=open_budget_store())
    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        raise ConnectionError("down")

    retry = RetryWithBackoffPolicy(max_retries=5, budget=budget)(down)
    with pytest.raises(RetryLimitReached, match="budget") as caught:
        retry()
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert calls["n"] == 3  # the first attempt and the two retries one second of floor buys


async def test_an_async_policy_spends_the_budget_too(
    open_budget_store: Callable[[], BudgetStore], namespace: str
) -> None:
    """Coroutines withdraw from the same budget and give up when it says no."""
    budget = RetryBudget("async", namespace=namespace, min_per_second=2, store=open_budget_store())
    calls = {"n": 0}

    async def down() -> None:
        calls["n"] += 1
        raise TimeoutError("down")

    retry = RetryWithBackoffPolicy(max_retries=5, budget=budget)(down)
    with pytest.raises(RetryLimitReached, match="budget") as caught:
        await retry()
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert calls["n"] == 3
