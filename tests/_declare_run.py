"""A process that declares breakers and calls each once: ``python -m tests._declare_run
JSON``, with ``RC_DB_DSN`` set. JSON maps each resource key to its policy's options
(durations in seconds, fractions as ``"n/d"``). Prints the WARNING records of the
``resilient_circuit`` loggers as a JSON list of messages.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from fractions import Fraction
from typing import Any

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage

DURATIONS = {
    "cooldown",
    "half_open_timeout",
    "window_duration",
    "slow_call_duration",
    "max_cooldown",
}
FRACTIONS = {"failure_limit", "success_limit", "slow_call_limit"}


def options(raw: dict[str, Any]) -> dict[str, Any]:
    def value(name: str, given: Any) -> Any:
        if name in DURATIONS:
            return timedelta(seconds=given)
        if name in FRACTIONS:
            return Fraction(given)
        return given

    return {name: value(name, given) for name, given in raw.items()}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> list[str]:
    collected = _Collect()
    logging.getLogger("resilient_circuit").addHandler(collected)
    store = PostgresStorage(os.environ["RC_DB_DSN"])
    try:
        for key, raw in json.loads(sys.argv[1]).items():
            policy = CircuitProtectorPolicy(resource_key=key, storage=store, **options(raw))
            policy(lambda: None)()
    finally:
        store.close()
    return collected.messages


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
