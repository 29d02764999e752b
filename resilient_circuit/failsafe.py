"""Compose policies: the first one listed is the outermost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from resilient_circuit.policy import ProtectionPolicy

__all__ = ("SafetyNet",)

F = TypeVar("F", bound=Callable[..., Any])


class SafetyNet:
    """Apply several policies to one function, the first listed outermost.

    ``SafetyNet(policies=(retry, breaker))`` retries calls that the breaker lets
    through (and, by default, rejections too, which ``should_handle`` can exclude).
    """

    def __init__(self, *, policies: Sequence[ProtectionPolicy]) -> None:
        policies = tuple(policies)
        for policy in policies:
            if not callable(policy):
                raise TypeError(f"`policies` must hold policies, got {type(policy).__name__}")
        if len({id(p) for p in policies}) != len(policies):
            # 0.4.5's exact words: users' tests match on them.
            raise ValueError("All policies must be unique.")
        self.policies = policies

    def __call__(self, func: F) -> F:
        """Wrap ``func`` with every policy, innermost (last listed) first."""
        for policy in reversed(self.policies):
            func = policy(func)
        return func
