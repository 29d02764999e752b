"""Every contract test runs once per store: in memory and in PostgreSQL.

``store`` is the storage the test's policies use; ``peer`` is another handle on the
same breakers: the very same object in memory (a process's policies share it), a
second PostgresStorage with its own pool in PostgreSQL (as far as the database can
tell, another process). In PostgreSQL the tests share one database, each in a
namespace of its own (``namespace``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from resilient_circuit.storage import CircuitBreakerStorage, InMemoryStorage, PostgresStorage

STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store the test runs against: "memory" or "postgres"."""
    return str(request.param)


@pytest.fixture
def namespace() -> str:
    """The test's own namespace."""
    return f"contract_{uuid.uuid4().hex}"


@pytest.fixture
def contract_dsn(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL database of the postgres runs; None for memory."""
    if store_kind == "memory":
        return None
    return str(request.getfixturevalue("pg_shared_dsn"))


@pytest.fixture
def open_store(
    contract_dsn: str | None, namespace: str
) -> Iterator[Callable[[], CircuitBreakerStorage]]:
    """A factory of handles on one set of breakers, closed after the test."""
    if contract_dsn is None:
        memory = InMemoryStorage(namespace=namespace)
        yield lambda: memory
        return
    made: list[PostgresStorage] = []

    def open_postgres() -> PostgresStorage:
        made.append(PostgresStorage(contract_dsn, namespace=namespace))
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
