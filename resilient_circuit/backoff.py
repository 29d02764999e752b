"""Delays between retry attempts."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta

__all__ = ("ExponentialDelay", "FixedDelay")


def _check_delay(value: object, name: str) -> None:
    if not isinstance(value, timedelta):
        raise TypeError(f"`{name}` must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"`{name}` must be >= 0, got {value}")


@dataclass(frozen=True)
class ExponentialDelay:
    """``min_delay * factor ** (attempt - 1)``, with optional +-jitter, capped at ``max_delay``."""

    min_delay: timedelta
    max_delay: timedelta
    factor: float = 2
    jitter: float | None = None

    def __post_init__(self) -> None:
        _check_delay(self.min_delay, "min_delay")
        _check_delay(self.max_delay, "max_delay")
        if self.max_delay < self.min_delay:
            raise ValueError(
                f"`max_delay` must be >= `min_delay`, got {self.max_delay} < {self.min_delay}"
            )
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise TypeError(f"`factor` must be a number, got {type(self.factor).__name__}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"`factor` must be >= 1, got {self.factor}")
        if self.jitter is not None:
            if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
                raise TypeError(f"`jitter` must be a number, got {type(self.jitter).__name__}")
            if not 0 <= self.jitter <= 1:
                raise ValueError(f"`jitter` must be in range [0, 1], got {self.jitter}")

    def for_attempt(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 is the first retry)."""
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise TypeError(f"`attempt` must be an int, got {type(attempt).__name__}")
        if attempt < 1:
            raise ValueError(f"`attempt` must be positive, got {attempt}")
        low = self.min_delay.total_seconds()
        high = self.max_delay.total_seconds()
        # Compare exponents rather than computing factor ** n, which overflows a float
        # long before attempts run out.
        if self.factor == 1 or low == 0:
            delay = low
        elif (attempt - 1) * math.log(self.factor) >= math.log(high / low):
            delay = high
        else:
            delay = low * self.factor ** (attempt - 1)
        if self.jitter:
            offset = delay * self.jitter
            delay += random.uniform(-offset, offset)
        return max(0.0, min(delay, high))


class FixedDelay(ExponentialDelay):
    """The same delay before every retry."""

    def __init__(self, delay: timedelta) -> None:
        super().__init__(min_delay=delay, max_delay=delay, factor=1)

    @property
    def delay(self) -> timedelta:
        """The constant delay."""
        return self.min_delay
