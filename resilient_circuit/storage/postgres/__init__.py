"""Breakers in PostgreSQL, shared by every process and host that uses the same database.

One job per module:

- ``store``: ``PostgresStorage``, the storage policies use; its round trips.
- ``breaker``: ``PgBreaker``, one breaker row as this process sees it.
- ``connection``: connection settings, the sync pool, one async pool per event loop.
- ``outage``: which errors are outages, and the backoff while the database is down.
- ``queries``: the named SQL statements and how their reply rows are read.
- ``batch``: batched recording (the outcome queue and its flusher thread).
- ``notify``: transitions announced with LISTEN/NOTIFY, and ``watch``.
"""

from __future__ import annotations

from resilient_circuit.storage.postgres.breaker import AdmissionMode, PgBreaker, RecordingMode
from resilient_circuit.storage.postgres.notify import Transition
from resilient_circuit.storage.postgres.store import PostgresStorage, shared_storage

# The process-wide stores of ``shared_storage``, which test suites empty between tests.
from resilient_circuit.storage.postgres.store import _shared as _shared

__all__ = (
    "AdmissionMode",
    "PgBreaker",
    "PostgresStorage",
    "RecordingMode",
    "Transition",
    "shared_storage",
)
