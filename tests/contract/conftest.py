"""Every contract test runs once per store: in memory and in PostgreSQL.

``store`` is the storage the test's policies use; ``peer`` is another handle on the
same breakers: the very same object in memory (a process's policies share it), a
second PostgresStorage with its own pool in PostgreSQL (as far as the database can
tell, another process). In PostgreSQL the tests share one database, each in a
namespace of its own (``namespace``). Time passes with ``pause``: at once for the
memory store, whose clock the test holds, by sleeping for PostgreSQL's.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta

import pytest

from resilient_circuit.storage import CircuitBreakerStorage, InMemoryStorage, PostgresStorage
from tests._helpers import Clock

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
def clock(contract_dsn: str | None) -> Clock | None:
    """The memory store's clock, moved by ``pause``; None for PostgreSQL's own."""
    return Clock() if contract_dsn is None else None


@pytest.fixture
def pause(clock: Clock | None) -> Callable[[timedelta], None]:
    """``pause(duration)``: let that much time pass for the store's breakers."""

    def wait(duration: timedelta) -> None:
        if clock is None:
            time.sleep(duration.total_seconds())
        else:
            clock.advance(duration // timedelta(milliseconds=1))

    return wait


@pytest.fixture
def open_store(
    contract_dsn: str | None, namespace: str, clock: Clock | None
) -> Iterator[Callable[[], CircuitBreakerStorage]]:
    """A factory of handles on one set of breakers, closed after the test."""
    if clock is not None:
        memory = InMemoryStorage(namespace=namespace, clock=clock)
        yield lambda: memory
        return
    made: list[PostgresStorage] = []

    def open_postgres() -> PostgresStorage:
        made.append(PostgresStorage(contract_dsn, namespace=namespace))
        return made[-1]

    yield open_postgres
    # A store stops its transition listener within half a second: stop them together.
    closing = [threading.Thread(target=store.close) for store in made]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


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
