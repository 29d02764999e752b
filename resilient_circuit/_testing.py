"""A switch for users' own test suites: retries stop sleeping."""

from __future__ import annotations

__all__ = ("is_testing", "set_testing")

_testing = False


def set_testing(testing: bool) -> None:
    """While on, retry policies skip their backoff delays (attempt counts are unchanged)."""
    global _testing
    _testing = bool(testing)


def is_testing() -> bool:
    """Whether ``set_testing(True)`` is in force."""
    return _testing
