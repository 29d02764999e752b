"""A small reference model of the breaker, written from the design contract (DESIGN §3).

It shares no code with ``resilient_circuit/_machine.py`` or ``sql/schema.sql`` and
trades speed for plainness: the window is a list, limits are compared as Fractions
(``Fraction(failures, n) >= f``), times are whole milliseconds. The differential
tests drive it next to both real machines; the vectors' expectations can be checked
against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction

CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"


@dataclass(frozen=True)
class RefConfig:
    """f, n, s, c and the half-open timeout, as §3 names them (times in ms)."""

    failure_limit: Fraction
    window_size: int | None = None  # None: f's denominator
    success_limit: Fraction | None = None
    cooldown_ms: int = 0
    half_open_timeout_ms: int = 10_000

    @property
    def n(self) -> int:
        return self.window_size if self.window_size is not None else self.failure_limit.denominator

    @property
    def m(self) -> int:
        return self.success_limit.denominator if self.success_limit is not None else self.n


@dataclass(frozen=True)
class Transition:
    """One transition, as a NOTIFY payload or on_status_change reports it."""

    old: str
    new: str
    generation: int
    until_ms: int | None  # open_until of the new state


@dataclass
class RefBreaker:
    """One breaker's state; every operation returns what the caller is answered."""

    config: RefConfig
    state: str = CLOSED
    generation: int = 0
    window: list[bool] = field(default_factory=list)  # True = success, oldest first
    failure_count: int = 0
    open_until_ms: int | None = None
    permits_ms: list[int] = field(default_factory=list)  # expiry times, oldest first
    successes: int = 0
    failures: int = 0
    transitions: list[Transition] = field(default_factory=list)

    # -- transitions ----------------------------------------------------------------

    def _move(self, new: str, now: int) -> None:
        old = self.state
        self.state = new
        self.generation += 1
        self.permits_ms = []
        if new == OPEN:
            self.open_until_ms = now + self.config.cooldown_ms  # the window is kept
        else:
            self.open_until_ms = None
            self.window = []
        self.transitions.append(Transition(old, new, self.generation, self.open_until_ms))

    # -- operations -----------------------------------------------------------------

    def acquire(self, now: int) -> tuple[bool, str, int, int | None]:
        """(permitted, state, generation, retry_after_ms)."""
        if self.state == CLOSED:
            return True, CLOSED, self.generation, None
        if self.state == OPEN:
            until = self.open_until_ms if self.open_until_ms is not None else now
            if now < until:
                return False, OPEN, self.generation, until - now
            self._move(HALF_OPEN, now)
            self.permits_ms = [now + self.config.half_open_timeout_ms]
            return True, HALF_OPEN, self.generation, None
        self.permits_ms = [p for p in self.permits_ms if p > now]
        if len(self.permits_ms) < self.config.m - len(self.window):
            self.permits_ms.append(now + self.config.half_open_timeout_ms)
            return True, HALF_OPEN, self.generation, None
        wait = min(self.permits_ms) - now if self.permits_ms else 0
        return False, HALF_OPEN, self.generation, wait

    def record(self, now: int, success: bool, generation: int | None) -> tuple[str, int]:
        """(state, generation) after one outcome."""
        if success:
            self.successes += 1
        else:
            self.failures += 1
        if self.state == OPEN or (generation is not None and generation != self.generation):
            return self.state, self.generation
        f, s = self.config.failure_limit, self.config.success_limit
        if self.state == CLOSED:
            self._append(success, self.config.n)
            n = self.config.n
            if not success and len(self.window) == n and Fraction(self.window.count(False), n) >= f:
                self._move(OPEN, now)
            return self.state, self.generation
        self.permits_ms = [p for p in self.permits_ms if p > now][1:]
        m = self.config.m
        self._append(success, m)
        if len(self.window) >= m:
            if s is not None:
                close = Fraction(self.window.count(True), m) >= s
            else:
                close = not Fraction(self.window.count(False), m) >= f
            self._move(CLOSED if close else OPEN, now)
        return self.state, self.generation

    def _append(self, success: bool, size: int) -> None:
        self.window = [*self.window, success][-size:]
        self.failure_count = 0 if success else self.failure_count + 1

    def force(self, now: int, target: str) -> tuple[str, int]:
        """An operator's transition, even to the current state."""
        if target != OPEN:
            self.failure_count = 0
        self._move(target, now)
        return self.state, self.generation

    def reset(self, now: int) -> tuple[str, int]:
        """A fresh CLOSED breaker with zeroed lifetime counters."""
        self.failure_count = 0
        self.successes = self.failures = 0
        self._move(CLOSED, now)
        return self.state, self.generation

    def configure(self, config: RefConfig) -> tuple[str, int]:
        """A new configuration; only the window is cut to the phase's new size."""
        self.config = config
        size = config.m if self.state == HALF_OPEN else config.n
        self.window = self.window[-size:] if len(self.window) > size else self.window
        return self.state, self.generation

    def copy(self) -> RefBreaker:
        return replace(self, window=list(self.window), permits_ms=list(self.permits_ms))
