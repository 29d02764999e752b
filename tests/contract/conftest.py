"""Every contract test runs once per store: in memory and in PostgreSQL.

``store`` is the storage the test's policies use; ``peer`` is another handle on the
same breakers: the very same object in memory (a process's policies share it), a
second PostgresStorage with its own pool in PostgreSQL (as far as the database can
tell, another process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from resilient_circuit.storage import CircuitBreakerStorage, InMemoryStorage, PostgresStorage

NAMESPACE = "contract"
STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store the test runs against: "memory" or "postgres"."""
    return str(request.param)


@pytest.fixture
def open_store(
    store_kind: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[], CircuitBreakerStorage]]:
    """A factory of handles on one set of breakers, closed after the test."""
    if store_kind == "memory":
        memory = InMemoryStorage(namespace=NAMESPACE)
        yield lambda: memory
        return
    dsn = request.getfixturevalue("pg_dsn")
    made: list[PostgresStorage] = []

    def open_postgres() -> PostgresStorage:
        made.append(PostgresStorage(dsn, namespace=NAMESPACE))
        return made[-1]

    yield open_postgres
    for store in made:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], CircuitBreakerStorage]) -> CircuitBreakerStorage:
    """The storage under test."""
    return open_store()


@pytest.fixture
def peer(
    open_store: Callable[[], CircuitBreakerStorage], store: CircuitBreakerStorage
) -> CircuitBreakerStorage:
    """Another handle on the breakers of ``store``."""
    return open_store()


@pytest.fixture
async def astore(store: CircuitBreakerStorage) -> AsyncIterator[CircuitBreakerStorage]:
    """``store`` for a coroutine test: its event loop's pool is closed in that loop."""
    yield store
    if isinstance(store, PostgresStorage):
        await store.aclose()
