"""A small reference model of the breaker, written from the design contract (DESIGN §3).

It shares no code with ``resilient_circuit/_machine.py`` or ``sql/schema.sql`` and
trades speed for plainness: the window is a list, limits are compared as Fractions
(``Fraction(failures, n) >= f``), times are whole milliseconds. The differential
tests drive it next to both real machines; the vectors' expectations can be checked
against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

CLOSED, OPEN, HALF_OPEN, DISABLED = "CLOSED", "OPEN", "HALF_OPEN", "DISABLED"
YEAR_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True)
class RefConfig:
    """f, n, s, c and the half-open timeout, as §3 names them (times in ms)."""

    failure_limit: Fraction
    window_size: int | None = None  # None: f's denominator
    success_limit: Fraction | None = None
    cooldown_ms: int = 0
    half_open_timeout_ms: int = 10_000
    # DESIGN §8's options; None (and factor 1) leave them unused.
    window_duration_ms: int | None = None
    minimum_calls: int | None = None
    slow_call_duration_ms: int | None = None
    slow_call_limit: Fraction | None = None
    cooldown_factor: Fraction = Fraction(1)
    max_cooldown_ms: int | None = None

    @property
    def n(self) -> int:
        return self.window_size if self.window_size is not None else self.failure_limit.denominator

    @property
    def k(self) -> int:
        """Outcomes a CLOSED window must hold before a trip is judged."""
        if self.minimum_calls is not None:
            return self.minimum_calls
        return self.n if self.window_duration_ms is None else 10

    @property
    def slow_limit(self) -> Fraction | None:
        if self.slow_call_duration_ms is None:
            return None
        return self.slow_call_limit if self.slow_call_limit is not None else Fraction(1)

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
    slow: list[bool] = field(default_factory=list)  # beside window: True = a slow call
    # A CLOSED time window: (bucket number, success, slow) of each call it still holds,
    # buckets numbered in tenths of the duration from its first call; None: not one.
    events: list[tuple[int, bool, bool]] | None = None
    window_start_ms: int = 0
    head: int = 0
    held: bool = False
    last_cooldown_ms: int = 0
    failure_count: int = 0
    open_until_ms: int | None = None
    permits_ms: list[int] = field(default_factory=list)  # expiry times, oldest first
    successes: int = 0
    failures: int = 0
    transitions: list[Transition] = field(default_factory=list)

    # -- transitions ----------------------------------------------------------------

    @property
    def window_calls(self) -> int:
        return len(self.events) if self.events is not None else len(self.window)

    @property
    def window_failures(self) -> int:
        if self.events is not None:
            return sum(1 for _, ok, _ in self.events if not ok)
        return self.window.count(False)

    @property
    def window_slow(self) -> int:
        if self.events is not None:
            return sum(1 for _, _, slow in self.events if slow)
        return self.slow.count(True)

    def _move(self, new: str, now: int, *, cooldown_ms: int | None = None) -> None:
        old = self.state
        self.state = new
        self.generation += 1
        self.permits_ms = []
        if new == OPEN:
            if cooldown_ms is None:
                # Each reopening since the breaker last closed multiplies the cooldown.
                c = self.config
                if self.last_cooldown_ms == 0 or c.cooldown_factor == 1:
                    cooldown_ms = c.cooldown_ms
                else:
                    cap = c.max_cooldown_ms if c.max_cooldown_ms is not None else YEAR_MS
                    cooldown_ms = min(math.floor(self.last_cooldown_ms * c.cooldown_factor), cap)
            self.last_cooldown_ms = cooldown_ms
            self.open_until_ms = now + cooldown_ms  # the window is kept
        else:
            self.open_until_ms = None
            self.window, self.slow, self.events = [], [], None
            self.held = new == DISABLED
            if new != HALF_OPEN:
                self.last_cooldown_ms = 0
        self.transitions.append(Transition(old, new, self.generation, self.open_until_ms))

    # -- operations -----------------------------------------------------------------

    def acquire(self, now: int) -> tuple[bool, str, int, int | None]:
        """(permitted, state, generation, retry_after_ms)."""
        if self.state in (CLOSED, DISABLED):
            return True, self.state, self.generation, None
        if self.state == OPEN and self.held:
            return False, OPEN, self.generation, max(self.config.cooldown_ms, 1000)
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

    def record(
        self, now: int, success: bool, generation: int | None, took_ms: int | None = None
    ) -> tuple[str, int]:
        """(state, generation) after one outcome, of a call that took ``took_ms``."""
        if success:
            self.successes += 1
        else:
            self.failures += 1
        if self.state in (OPEN, DISABLED) or (
            generation is not None and generation != self.generation
        ):
            return self.state, self.generation
        c = self.config
        f, s, sl = c.failure_limit, c.success_limit, c.slow_limit
        slow = sl is not None and took_ms is not None and took_ms > c.slow_call_duration_ms  # type: ignore[operator]
        self.failure_count = 0 if success else self.failure_count + 1
        if self.state == CLOSED:
            if c.window_duration_ms is not None:
                if self.events is None:
                    self.events, self.window_start_ms, self.head = [], now, 0
                number = (now - self.window_start_ms) * 10 // c.window_duration_ms
                self.head = max(self.head, number)
                self.events = [e for e in self.events if e[0] > self.head - 10]
                self.events.append((self.head, success, slow))
            else:
                self._append(success, slow, c.n)
            calls = self.window_calls
            if (
                (not success or slow)
                and calls >= c.k
                and (
                    Fraction(self.window_failures, calls) >= f
                    or (sl is not None and Fraction(self.window_slow, calls) >= sl)
                )
            ):
                self._move(OPEN, now)
            return self.state, self.generation
        self.permits_ms = [p for p in self.permits_ms if p > now][1:]
        m = c.m
        self._append(success, slow, m)
        if len(self.window) >= m:
            if s is not None:
                close = Fraction(self.window.count(True), m) >= s
            else:
                close = not Fraction(self.window.count(False), m) >= f
            if sl is not None and Fraction(self.slow.count(True), m) >= sl:
                close = False
            self._move(CLOSED if close else OPEN, now)
        return self.state, self.generation

    def _append(self, success: bool, slow: bool, size: int) -> None:
        self.window = [*self.window, success][-size:]
        self.slow = [*self.slow, slow][-size:]

    def release(self, now: int, generation: int | None) -> tuple[str, int]:
        """An uncounted outcome: the trial permit its call held goes back."""
        if self.state == HALF_OPEN and (generation is None or generation == self.generation):
            self.permits_ms = [p for p in self.permits_ms if p > now][1:]
        return self.state, self.generation

    def force(self, now: int, target: str, hold: bool = False) -> tuple[str, int]:
        """An operator's transition, even to the current state; OPEN may be held."""
        if target != OPEN:
            self.failure_count = 0
            self.last_cooldown_ms = 0
            self._move(target, now)
            return self.state, self.generation
        self._move(OPEN, now, cooldown_ms=0 if hold else self.config.cooldown_ms)
        self.held = hold
        if hold:
            self.open_until_ms = None
            self.transitions[-1] = replace(self.transitions[-1], until_ms=None)
        return self.state, self.generation

    def reset(self, now: int) -> tuple[str, int]:
        """A fresh CLOSED breaker with zeroed lifetime counters."""
        self.failure_count = 0
        self.successes = self.failures = 0
        self._move(CLOSED, now)
        return self.state, self.generation

    def configure(self, config: RefConfig) -> tuple[str, int]:
        """A new configuration; only the window is cut to the phase's new size (a CLOSED
        window that changes kind or duration starts empty)."""
        old, self.config = self.config, config
        timed = config.window_duration_ms is not None
        if self.state == CLOSED and (
            old.window_duration_ms != config.window_duration_ms
            or (self.events is not None) != timed
        ):
            self.window, self.slow, self.events = [], [], None
        if self.events is None:
            size = config.m if self.state == HALF_OPEN else config.n
            self.window, self.slow = self.window[-size:], self.slow[-size:]
        return self.state, self.generation

    def copy(self) -> RefBreaker:
        return replace(
            self,
            window=list(self.window),
            slow=list(self.slow),
            events=None if self.events is None else list(self.events),
            permits_ms=list(self.permits_ms),
        )
