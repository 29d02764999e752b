"""Delays between retry attempts."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Protocol

from resilient_circuit._machine import as_timedelta

__all__ = ("JITTER_KINDS", "ExponentialDelay", "FixedDelay", "RandomSource")

JitterKind = Literal["proportional", "full", "equal", "decorrelated"]

#: The jitter kinds ``ExponentialDelay(jitter=...)`` accepts by name; a number is the
#: proportional kind with that fraction.
JITTER_KINDS: tuple[JitterKind, ...] = ("proportional", "full", "equal", "decorrelated")

# AWS's decorrelated jitter draws each delay from [base, previous * 3].
_DECORRELATED_GROWTH = 3


class RandomSource(Protocol):
    """Where jitter comes from: ``random.Random`` or anything with its ``uniform``."""

    def uniform(self, a: float, b: float) -> float: ...


def _delay(value: object, name: str) -> timedelta:
    delay = as_timedelta(value, name)
    if delay < timedelta(0):
        raise ValueError(f"`{name}` must be >= 0, got {delay}")
    return delay


@dataclass(frozen=True)
class ExponentialDelay:
    """``min_delay * factor ** (attempt - 1)``, capped at ``max_delay``, with optional jitter.

    ``jitter`` is None (no jitter), a number in [0, 1] (0.4.5's proportional jitter:
    +-that fraction of the delay, now kept within ``[min_delay, max_delay]``), or one
    of the kinds ``"proportional"`` (+-100%), ``"full"`` (uniform in [0, delay]),
    ``"equal"`` (half the delay plus uniform in [0, half]) and ``"decorrelated"``
    (AWS's: uniform in [min_delay, 3 * previous delay], capped at ``max_delay``;
    the retry policy passes the previous delay to ``for_attempt``). ``rng`` is the
    random source (``random`` by default); tests pass a seeded ``random.Random``.
    """

    min_delay: timedelta
    max_delay: timedelta
    factor: float = 2
    jitter: float | JitterKind | None = None
    rng: RandomSource | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen: the delays given in seconds are stored as the timedeltas they mean.
        object.__setattr__(self, "min_delay", _delay(self.min_delay, "min_delay"))
        object.__setattr__(self, "max_delay", _delay(self.max_delay, "max_delay"))
        if self.max_delay < self.min_delay:
            raise ValueError(
                f"`max_delay` must be >= `min_delay`, got {self.max_delay} < {self.min_delay}"
            )
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise TypeError(f"`factor` must be a number, got {type(self.factor).__name__}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"`factor` must be >= 1, got {self.factor}")
        jitter = self.jitter
        if isinstance(jitter, str):
            if jitter not in JITTER_KINDS:
                raise ValueError(
                    f"`jitter` must be a number in [0, 1] or one of {', '.join(JITTER_KINDS)};"
                    f" got {jitter!r}"
                )
        elif jitter is not None:
            if isinstance(jitter, bool) or not isinstance(jitter, int | float):
                raise TypeError(f"`jitter` must be a number, got {type(jitter).__name__}")
            if not 0 <= jitter <= 1:
                raise ValueError(f"`jitter` must be in range [0, 1], got {jitter}")
        if self.rng is not None and not callable(getattr(self.rng, "uniform", None)):
            raise TypeError("`rng` must have a uniform(a, b) method, like random.Random")
        # Seconds, computed once: for_attempt runs before every retry.
        object.__setattr__(self, "_low", self.min_delay.total_seconds())
        object.__setattr__(self, "_high", self.max_delay.total_seconds())

    @property
    def jitter_kind(self) -> JitterKind | None:
        """The kind of jitter applied (a number is the proportional kind), or None."""
        jitter = self.jitter
        if isinstance(jitter, str):
            return jitter
        return "proportional" if jitter else None

    def for_attempt(self, attempt: int, previous: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 is the first retry).

        ``previous`` is the delay waited before the previous retry (None before the
        first); only the decorrelated kind uses it.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise TypeError(f"`attempt` must be an int, got {type(attempt).__name__}")
        if attempt < 1:
            raise ValueError(f"`attempt` must be positive, got {attempt}")
        return self.seconds_for(attempt, previous)

    def seconds_for(self, attempt: int, previous: float | None) -> float:
        """``for_attempt`` without its argument checks, for callers that count themselves."""
        low: float = self._low  # type: ignore[attr-defined]
        high: float = self._high  # type: ignore[attr-defined]
        jitter = self.jitter
        if jitter is None or jitter == 0:
            return self._exponential(attempt, low, high)
        uniform = (self.rng or random).uniform
        if jitter == "decorrelated":
            last = low if previous is None else min(max(previous, low), high)
            return min(high, uniform(low, last * _DECORRELATED_GROWTH))
        delay = self._exponential(attempt, low, high)
        if jitter == "full":
            return uniform(0.0, delay)
        if jitter == "equal":
            return delay / 2 + uniform(0.0, delay / 2)
        offset = delay * (1.0 if jitter == "proportional" else float(jitter))
        # Drawn from the part of [delay - offset, delay + offset] inside the bounds,
        # rather than clamped, so the waits stay spread out at either end.
        return uniform(max(low, delay - offset), min(high, delay + offset))

    def _exponential(self, attempt: int, low: float, high: float) -> float:
        # Compare exponents rather than computing factor ** n, which overflows a float
        # long before attempts run out.
        if self.factor == 1 or low == 0:
            return low
        if (attempt - 1) * math.log(self.factor) >= math.log(high / low):
            return high
        return min(high, low * self.factor ** (attempt - 1))


class FixedDelay(ExponentialDelay):
    """The same delay before every retry."""

    def __init__(self, delay: timedelta) -> None:
        # Checked here so that the error names this class's parameter, not min_delay.
        delay = _delay(delay, "delay")
        super().__init__(min_delay=delay, max_delay=delay, factor=1)

    @property
    def delay(self) -> timedelta:
        """The constant delay."""
        return self.min_delay
