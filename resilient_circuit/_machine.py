"""The breaker's state machine: pure functions over immutable values.

No I/O, no clock, no locks: callers pass ``now`` (integer nanoseconds on a
monotonic clock) and store the state they get back. ``sql/schema.sql`` implements
the same rules in PL/pgSQL; the JSON vectors in ``tests/vectors`` pin both.

The window is a bit set (bit 0 = newest outcome, 1 = failure) with its length and
failure count kept alongside, so appending is O(1) whatever the window size:
an int shift and mask instead of the list copy per call that 0.4.5 made.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

MAX_WINDOW = 10_000
DEFAULT_HALF_OPEN_TIMEOUT = timedelta(seconds=10)
#: The longest cooldown or half-open timeout, as the SQL functions enforce it: long
#: enough for any real breaker, short enough that no clock plus it overflows.
MAX_DURATION = timedelta(days=365)
_NS_PER_US = 1_000


class CircuitState(enum.Enum):
    """The three states of a breaker; the value is the name stored in PostgreSQL."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


def parse_state(value: object, name: str = "state") -> CircuitState:
    """A CircuitState from an enum member or its name (any case)."""
    if isinstance(value, CircuitState):
        return value
    if isinstance(value, str):
        try:
            return CircuitState[value.strip().upper()]
        except KeyError:
            pass
        raise ValueError(
            f"`{name}` must be one of CLOSED, OPEN, HALF_OPEN, got {value!r}"
        ) from None
    raise TypeError(f"`{name}` must be a CircuitState or its name, got {type(value).__name__}")


def to_limit(value: object, name: str) -> Fraction:
    """A limit in (0, 1] as a reduced Fraction.

    Floats go through their shortest decimal repr, so ``0.3`` is 3/10 (a window of
    10), not the binary fraction 5404319552844595/18014398509481984.
    """
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a Fraction, int, float, Decimal or str, got bool")
    if isinstance(value, Fraction):
        limit = value
    elif isinstance(value, int | Decimal):
        limit = Fraction(value)
    elif isinstance(value, float):
        limit = Fraction(repr(value))
    elif isinstance(value, str):
        try:
            limit = Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"`{name}` must be a fraction such as '3/10', got {value!r}") from None
    else:
        raise TypeError(
            f"`{name}` must be a Fraction, int, float, Decimal or str, got {type(value).__name__}"
        )
    if not 0 < limit <= 1:
        raise ValueError(f"`{name}` must be in (0, 1], got {limit}")
    return limit


def to_ns(value: object, name: str, *, allow_zero: bool = True) -> int:
    """Whole nanoseconds (at microsecond precision, as PostgreSQL keeps) from a timedelta."""
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise TypeError(f"`{name}` must be a timedelta, got {type(value).__name__}")
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, int | float):
        try:
            value = timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise ValueError(
                f"`{name}` must be {bound} and at most {MAX_DURATION.days} days, got {value!r}"
            ) from None
    micros = value // timedelta(microseconds=1)
    if micros < 0 or (micros == 0 and not allow_zero) or value > MAX_DURATION:
        raise ValueError(
            f"`{name}` must be {bound} and at most {MAX_DURATION.days} days, got {value}"
        )
    return micros * _NS_PER_US


@dataclass(frozen=True, slots=True)
class Config:
    """A breaker's configuration, validated; times in nanoseconds."""

    failure_limit: Fraction
    window_size: int
    success_limit: Fraction | None
    cooldown_ns: int
    half_open_timeout_ns: int
    # Derived, for record's CLOSED path: the failures in a full window that trip it,
    # in_window * den >= num * size solved once for in_window (Fraction's numerator
    # and denominator are properties, dearer than a slot).
    closed_trip: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        f = self.failure_limit
        object.__setattr__(self, "closed_trip", -(-f.numerator * self.window_size // f.denominator))

    @classmethod
    def build(
        cls,
        *,
        failure_limit: object = Fraction(1, 1),
        window_size: object = None,
        success_limit: object = None,
        cooldown: object = timedelta(0),
        half_open_timeout: object = DEFAULT_HALF_OPEN_TIMEOUT,
    ) -> Config:
        """Validate user-facing values; errors name the offending parameter."""
        f = to_limit(failure_limit, "failure_limit")
        s = None if success_limit is None else to_limit(success_limit, "success_limit")
        if window_size is None:
            n = f.denominator
        elif isinstance(window_size, bool) or not isinstance(window_size, int):
            raise TypeError(f"`window_size` must be an int, got {type(window_size).__name__}")
        else:
            n = window_size
        if not 1 <= n <= MAX_WINDOW:
            raise ValueError(f"`window_size` must be in [1, {MAX_WINDOW}], got {n}")
        if s is not None and s.denominator > MAX_WINDOW:
            raise ValueError(
                f"`success_limit` denominator must be <= {MAX_WINDOW}, got {s.denominator}"
            )
        return cls(
            failure_limit=f,
            window_size=n,
            success_limit=s,
            cooldown_ns=to_ns(cooldown, "cooldown"),
            half_open_timeout_ns=to_ns(half_open_timeout, "half_open_timeout", allow_zero=False),
        )

    @property
    def half_open_window(self) -> int:
        """Outcomes a half-open phase needs before it decides."""
        s = self.success_limit
        return s.denominator if s is not None else self.window_size


DEFAULT_CONFIG = Config.build()


class State(NamedTuple):
    """One breaker's state. A tuple, because a new one is built on most records.

    Lifetime counters are not part of it: they are bookkeeping of the store (one
    integer add per outcome), which lets a healthy breaker's record return the very
    same state object instead of building a new one.
    """

    state: CircuitState
    generation: int
    window_bits: int  # bit 0 = newest outcome; 1 = failure
    window_len: int
    window_failures: int
    failure_count: int  # consecutive failures, as 0.4.5's column
    open_until: int | None
    permits: tuple[int, ...]  # expiry times of outstanding trial permits, oldest first

    @property
    def window(self) -> tuple[bool, ...]:
        """The window's outcomes, oldest first; True is a success."""
        bits = self.window_bits
        return tuple(not (bits >> i) & 1 for i in range(self.window_len - 1, -1, -1))


INITIAL = State(CLOSED, 0, 0, 0, 0, 0, None, ())
_new = tuple.__new__


class Admission(NamedTuple):
    """What ``try_acquire`` decided; state and generation are those after the call."""

    permitted: bool
    state: CircuitState
    generation: int
    retry_after: int | None  # nanoseconds, when rejected


def try_acquire(st: State, cfg: Config, now: int) -> tuple[Admission, State]:
    """May a call run now? Returns the decision and the next state (``st`` if unchanged)."""
    phase = st.state
    if phase is CLOSED:
        return _new(Admission, (True, CLOSED, st.generation, None)), st
    if phase is OPEN:
        open_until = st.open_until
        if open_until is None:
            open_until = now
        if now < open_until:
            # A rejection while cooling down is every call of an OPEN breaker.
            return _new(Admission, (False, OPEN, st.generation, open_until - now)), st
        generation = st.generation + 1
        trial = (now + cfg.half_open_timeout_ns,)
        nxt = State(HALF_OPEN, generation, 0, 0, 0, st.failure_count, None, trial)
        return Admission(True, HALF_OPEN, generation, None), nxt
    permits = _live(st.permits, now)
    if len(permits) < cfg.half_open_window - st.window_len:
        nxt = st._replace(permits=(*permits, now + cfg.half_open_timeout_ns))
        return Admission(True, HALF_OPEN, st.generation, None), nxt
    nxt = st if permits is st.permits else st._replace(permits=permits)
    # Retry when the first outstanding trial times out. With none outstanding (only
    # after a reconfiguration shrank the half-open window) no time is known: at once.
    retry_after = min(permits) - now if permits else 0
    return Admission(False, HALF_OPEN, st.generation, retry_after), nxt


def _live(permits: tuple[int, ...], now: int) -> tuple[int, ...]:
    # Expiry times are not always in order (a new half_open_timeout applies to new
    # permits only), so every one is checked.
    live = tuple(p for p in permits if p > now)
    return permits if len(live) == len(permits) else live


def record(st: State, cfg: Config, now: int, success: bool, generation: int | None) -> State:
    """Apply one call's outcome; returns the next state (``st`` itself if unchanged).

    ``now`` is only read when the outcome can trip or settle the breaker: a CLOSED
    success never looks at it.
    """
    # One unpacking instead of a field access per value: this is every call's path.
    phase, current, bits, length, in_window, failure_count, _, _ = st
    if phase is OPEN or (generation is not None and generation != current):
        return st
    if phase is CLOSED:
        # The CLOSED path is every call of a healthy breaker: _append is inlined and
        # the tuple built without NamedTuple's Python-level __new__.
        size = cfg.window_size
        if success:
            if bits == 0 and length == size and failure_count == 0:
                return st  # a full window of successes stays one
            bits <<= 1
            failure_count = 0
        else:
            in_window += 1
            bits = (bits << 1) | 1
            failure_count += 1
        if length < size:
            length += 1
        elif bits >> size:
            # The outcome falling out of the window (the bit just past its end) was a
            # failure; a success falling out leaves nothing to mask.
            in_window -= 1
            bits ^= 1 << size
        if not success and length == size and in_window >= cfg.closed_trip:
            return _open(st, cfg, now, bits, length, in_window, failure_count)
        return _new(State, (CLOSED, current, bits, length, in_window, failure_count, None, ()))

    size = cfg.half_open_window
    permits = _live(st.permits, now)[1:]
    bits, length, in_window = _append(st, size, success)
    failure_count = 0 if success else st.failure_count + 1
    if length >= size:
        s = cfg.success_limit
        if s is not None:
            close = (length - in_window) * s.denominator >= s.numerator * size
        else:
            f = cfg.failure_limit
            close = not in_window * f.denominator >= f.numerator * size
        if close:
            return State(CLOSED, st.generation + 1, 0, 0, 0, failure_count, None, ())
        return _open(st, cfg, now, bits, length, in_window, failure_count)
    return State(HALF_OPEN, st.generation, bits, length, in_window, failure_count, None, permits)


def _append(st: State, size: int, success: bool) -> tuple[int, int, int]:
    """The window after appending one outcome and keeping the newest ``size``."""
    bits = st.window_bits << 1
    failures = st.window_failures
    if not success:
        bits |= 1
        failures += 1
    length = st.window_len + 1
    if length > size:
        # The outcome falling out of the window is the bit just past its end.
        if (bits >> size) & 1:
            failures -= 1
        bits &= (1 << size) - 1
        length = size
    return bits, length, failures


def _open(
    st: State,
    cfg: Config,
    now: int,
    bits: int,
    length: int,
    in_window: int,
    failure_count: int,
) -> State:
    return State(
        OPEN, st.generation + 1, bits, length, in_window, failure_count, now + cfg.cooldown_ns, ()
    )


def force(st: State, cfg: Config, now: int, target: CircuitState) -> State:
    """An operator's transition: OPEN for one cooldown, or a fresh CLOSED/HALF_OPEN phase."""
    generation = st.generation + 1
    if target is OPEN:
        return st._replace(
            state=OPEN, generation=generation, open_until=now + cfg.cooldown_ns, permits=()
        )
    return State(target, generation, 0, 0, 0, 0, None, ())


def reset(st: State) -> State:
    """Back to a fresh CLOSED breaker; the generation still moves on."""
    return State(CLOSED, st.generation + 1, 0, 0, 0, 0, None, ())


def reconfigure(st: State, cfg: Config) -> State:
    """Adopt a new configuration: only the window is trimmed to the phase's new size."""
    size = cfg.half_open_window if st.state is HALF_OPEN else cfg.window_size
    if st.window_len <= size:
        return st
    bits = st.window_bits & ((1 << size) - 1)
    return st._replace(window_bits=bits, window_len=size, window_failures=bits.bit_count())
