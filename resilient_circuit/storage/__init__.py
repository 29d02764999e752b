"""Where breakers live: in this process's memory, or in PostgreSQL for the whole fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient_circuit._settings import database_dsn, strict_storage
from resilient_circuit.storage.base import CircuitBreakerStorage, StorageClosed, StorageError
from resilient_circuit.storage.memory import InMemoryStorage

if TYPE_CHECKING:
    from resilient_circuit.storage.postgres import PostgresStorage
    from resilient_circuit.storage.postgres.notify import Transition

__all__ = (
    "CircuitBreakerStorage",
    "InMemoryStorage",
    "PostgresStorage",
    "StorageClosed",
    "StorageError",
    "Transition",
    "create_storage",
)


def create_storage(namespace: str | None = None) -> CircuitBreakerStorage:
    """PostgreSQL when ``RC_DB_DSN`` or ``RC_DB_HOST`` is set (``.env`` is read), else memory.

    PostgreSQL storages are shared per (DSN, namespace): every policy of the process
    uses one connection pool. A database that does not answer yet is not a reason to
    fall back to memory for ever: the policies fail open (by default) and use it as
    soon as it answers. With ``RC_DB_STRICT=1`` the database is tried at once: a
    StorageError (or a StorageNotUsable: SchemaNotReady, StorageAccessDenied, no such
    database) is raised here when it cannot be used.
    """
    dsn = database_dsn()
    if dsn is None:
        return InMemoryStorage(namespace=namespace)
    from resilient_circuit.storage.postgres import shared_storage

    storage = shared_storage(dsn, namespace)
    if strict_storage():
        # 0.8.6's RC_DB_STRICT: a database that is configured but not usable is an
        # error now, not at the first call.
        storage.check()
    return storage


def __getattr__(name: str) -> Any:
    # psycopg is an optional dependency: import the PostgreSQL store on first use.
    if name == "PostgresStorage":
        from resilient_circuit.storage.postgres import PostgresStorage

        return PostgresStorage
    if name == "Transition":
        from resilient_circuit.storage.postgres.notify import Transition

        return Transition
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
