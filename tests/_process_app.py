"""An application module written the way production code writes one: its policy is
built at import time, with no resource_key, before any worker process exists.

Imported by ``tests/_process_run.py`` in fresh interpreters, with ``RC_DB_DSN`` and
``RC_NAMESPACE`` pointing at the test's database.
"""

from __future__ import annotations

import os
from datetime import timedelta

from resilient_circuit import CircuitProtectorPolicy


class DependencyDown(Exception):
    """The protected dependency's own failure."""


protector = CircuitProtectorPolicy(
    cooldown=timedelta(minutes=5),
    admission="cached" if os.environ.get("APP_ADMISSION") == "cached" else "strict",
    recording="batched" if os.environ.get("APP_RECORDING") == "batched" else "immediate",
)


@protector
def handle(ok: bool = True) -> str:
    """One request to the dependency: True succeeds, False fails (and trips the breaker)."""
    if not ok:
        raise DependencyDown("dependency down")
    return "ok"
