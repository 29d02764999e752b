"""The abstract base of every policy (decorators that protect a callable)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ("ProtectionPolicy",)

F = TypeVar("F", bound=Callable[..., Any])


class ProtectionPolicy(abc.ABC):
    """A decorator for sync functions and ``async def`` coroutine functions."""

    @abc.abstractmethod
    def __call__(self, func: F) -> F:
        """Return ``func`` wrapped by this policy."""
