"""A process that records batched outcomes and exits normally without flushing by hand."""

from __future__ import annotations

import sys

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage


def main(dsn: str, calls: int) -> None:
    # A long flush interval: only the exit hook can have sent these outcomes.
    storage = PostgresStorage(dsn, namespace="exit", flush_interval=60.0)
    policy = CircuitProtectorPolicy(resource_key="hot", storage=storage, recording="batched")

    @policy
    def call() -> None:
        pass

    for _ in range(calls):
        call()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
