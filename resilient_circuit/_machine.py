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
import math
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
# A time window is this many buckets, whatever its duration: the per-call work and the
# size of a stored row do not depend on the call rate nor on the duration.
TIME_BUCKETS = 10
DEFAULT_TIME_MINIMUM_CALLS = 10
MAX_COOLDOWN_FACTOR = 100
# A growing cooldown never exceeds this, max_cooldown or not.
COOLDOWN_CEILING = MAX_DURATION
# A breaker held OPEN has no end of cooldown to announce: callers are told to come back
# after one cooldown, and never sooner than this.
HELD_RETRY_AFTER = timedelta(seconds=1)
_NS_PER_US = 1_000
_CEILING_US = COOLDOWN_CEILING // timedelta(microseconds=1)


class CircuitState(enum.Enum):
    """A breaker's states; the value is the name stored in PostgreSQL.

    DISABLED is an operator's state: every call is permitted and nothing trips until
    the breaker is forced into another state or reset.
    """

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    DISABLED = "DISABLED"


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
DISABLED = CircuitState.DISABLED


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
            f"`{name}` must be one of CLOSED, OPEN, HALF_OPEN, DISABLED, got {value!r}"
        ) from None
    raise TypeError(f"`{name}` must be a CircuitState or its name, got {type(value).__name__}")


#: The largest numerator or denominator of a limit (PostgreSQL's int4).
MAX_LIMIT_TERM = 2**31 - 1


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
        try:
            limit = Fraction(value)
        except (ValueError, OverflowError):  # Decimal NaN or infinity
            raise ValueError(f"`{name}` must be in (0, 1], got {value!r}") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must be in (0, 1], got {value!r}")
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
    if limit.denominator > MAX_LIMIT_TERM:
        # PostgreSQL keeps the numerator and denominator as int4.
        raise ValueError(
            f"`{name}` must be a fraction whose denominator is at most {MAX_LIMIT_TERM}, "
            f"got {limit}"
        )
    return limit


def as_timedelta(value: object, name: str) -> timedelta:
    """A duration parameter as a timedelta: every one takes a timedelta or a number of
    seconds (``cooldown=30``); anything else is a TypeError naming the parameter."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"`{name}` must be a timedelta or a number of seconds, got {type(value).__name__}"
        )
    try:
        return timedelta(seconds=value)
    except (OverflowError, ValueError):  # NaN, infinities, past timedelta's range
        raise ValueError(f"`{name}` must be a finite number of seconds, got {value!r}") from None


def to_ns(value: object, name: str, *, allow_zero: bool = True) -> int:
    """Whole nanoseconds (at microsecond precision, as PostgreSQL keeps) from a timedelta."""
    bound = ">= 0" if allow_zero else "> 0"
    try:
        value = as_timedelta(value, name)
    except ValueError:
        raise ValueError(
            f"`{name}` must be {bound} and at most {MAX_DURATION.days} days, got {value!r}"
        ) from None
    micros = value // timedelta(microseconds=1)
    if micros < 0 or (micros == 0 and not allow_zero) or value > MAX_DURATION:
        raise ValueError(
            f"`{name}` must be {bound} and at most {MAX_DURATION.days} days, got {value}"
        )
    return micros * _NS_PER_US


def _count(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {value}")
    return value


def _factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction | Decimal):
        raise TypeError(f"`cooldown_factor` must be a number, got {type(value).__name__}")
    factor = float(value)
    if not 1 <= factor <= MAX_COOLDOWN_FACTOR:
        raise ValueError(f"`cooldown_factor` must be in [1, {MAX_COOLDOWN_FACTOR}], got {value}")
    return factor


@dataclass(frozen=True, slots=True)
class Config:
    """A breaker's configuration, validated; times in nanoseconds.

    ``window_duration_ns`` set makes the CLOSED window a time window of TIME_BUCKETS
    buckets instead of the last ``window_size`` outcomes; ``minimum_calls`` is already
    resolved (the count window's size, or DEFAULT_TIME_MINIMUM_CALLS).
    """

    failure_limit: Fraction
    window_size: int
    success_limit: Fraction | None
    cooldown_ns: int
    half_open_timeout_ns: int
    window_duration_ns: int | None = None
    minimum_calls: int = 0
    slow_call_duration_ns: int | None = None
    slow_call_limit: Fraction | None = None
    cooldown_factor: float = 1.0
    max_cooldown_ns: int | None = None
    # Derived, for record's CLOSED path: the failures in a full window that trip it,
    # in_window * den >= num * size solved once for in_window (Fraction's numerator
    # and denominator are properties, dearer than a slot).
    closed_trip: int = field(init=False, repr=False, compare=False)
    # Derived: does anything but a failure in a full count window trip it? When not,
    # record's CLOSED path is 0.4.5's and nothing new is looked at.
    plain: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        f = self.failure_limit
        object.__setattr__(self, "closed_trip", -(-f.numerator * self.window_size // f.denominator))
        if self.minimum_calls == 0:
            resolved = (
                self.window_size if self.window_duration_ns is None else DEFAULT_TIME_MINIMUM_CALLS
            )
            object.__setattr__(self, "minimum_calls", resolved)
        plain = (
            self.window_duration_ns is None
            and self.slow_call_duration_ns is None
            and self.minimum_calls == self.window_size
        )
        object.__setattr__(self, "plain", plain)

    @classmethod
    def build(
        cls,
        *,
        failure_limit: object = Fraction(1, 1),
        window_size: object = None,
        success_limit: object = None,
        cooldown: object = timedelta(0),
        half_open_timeout: object = DEFAULT_HALF_OPEN_TIMEOUT,
        window_duration: object = None,
        minimum_calls: object = None,
        slow_call_duration: object = None,
        slow_call_limit: object = None,
        cooldown_factor: object = 1,
        max_cooldown: object = None,
    ) -> Config:
        """Validate user-facing values; errors name the offending parameter."""
        f = to_limit(failure_limit, "failure_limit")
        s = None if success_limit is None else to_limit(success_limit, "success_limit")
        if window_size is None:
            n = f.denominator
            if n > MAX_WINDOW:
                # The window defaults to the limit's denominator; say which value chose it.
                raise ValueError(
                    f"`failure_limit` {f} implies a window of {n} outcomes, over the maximum "
                    f"{MAX_WINDOW}: pass `window_size` (e.g. failure_limit={f}, window_size=100)"
                )
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
        duration = None
        if window_duration is not None:
            duration = to_ns(window_duration, "window_duration", allow_zero=False)
            if duration < TIME_BUCKETS * _NS_PER_US:
                raise ValueError(
                    f"`window_duration` must be at least {TIME_BUCKETS} microseconds, "
                    f"got {window_duration}"
                )
        if minimum_calls is None:
            k = 0
        elif duration is None:
            in_range = not isinstance(minimum_calls, int) or 1 <= minimum_calls <= n
            if not in_range and not isinstance(minimum_calls, bool):
                # Its bound is the window, which the caller may not have set.
                source = (
                    "window_size"
                    if window_size is not None
                    else f"the denominator of failure_limit {f}; pass window_size to widen it"
                )
                raise ValueError(
                    f"`minimum_calls` must be in [1, {n}]: a count window holds {n} "
                    f"outcomes ({source}), got {minimum_calls}"
                )
            k = _count(minimum_calls, "minimum_calls", 1, n)
        else:
            k = _count(minimum_calls, "minimum_calls", 1, 2**31 - 1)
        slow_ns = None
        slow_limit = None
        if slow_call_duration is not None:
            slow_ns = to_ns(slow_call_duration, "slow_call_duration", allow_zero=False)
            slow_limit = to_limit(
                Fraction(1) if slow_call_limit is None else slow_call_limit, "slow_call_limit"
            )
        elif slow_call_limit is not None:
            raise ValueError("`slow_call_limit` needs `slow_call_duration`")
        max_cool = None
        if max_cooldown is not None:
            max_cool = to_ns(max_cooldown, "max_cooldown")
        cooldown_ns = to_ns(cooldown, "cooldown")
        if max_cool is not None and max_cool < cooldown_ns:
            raise ValueError(f"`max_cooldown` must be >= `cooldown`, got {max_cooldown}")
        return cls(
            failure_limit=f,
            window_size=n,
            success_limit=s,
            cooldown_ns=cooldown_ns,
            half_open_timeout_ns=to_ns(half_open_timeout, "half_open_timeout", allow_zero=False),
            window_duration_ns=duration,
            minimum_calls=k,
            slow_call_duration_ns=slow_ns,
            slow_call_limit=slow_limit,
            cooldown_factor=_factor(cooldown_factor),
            max_cooldown_ns=max_cool,
        )

    @property
    def half_open_window(self) -> int:
        """Outcomes a half-open phase needs before it decides."""
        s = self.success_limit
        return s.denominator if s is not None else self.window_size

    def describe(self) -> str:
        """The configuration in words, for messages (``failure_limit=3/10, ...``)."""
        f, s = self.failure_limit, self.success_limit
        return (
            f"failure_limit={f.numerator}/{f.denominator}, window_size={self.window_size}, "
            f"success_limit={'unset' if s is None else f'{s.numerator}/{s.denominator}'}, "
            f"cooldown={timedelta(microseconds=self.cooldown_ns // 1000).total_seconds():g}s, "
            "half_open_timeout="
            f"{timedelta(microseconds=self.half_open_timeout_ns // 1000).total_seconds():g}s"
            + "".join(f", {name}={value}" for name, value in self._described_options())
        )

    def _described_options(self) -> list[tuple[str, str]]:
        """The options beyond 0.4.5's that are set, in words."""

        def seconds(ns: int) -> str:
            return f"{ns / 1e9:g}s"

        found: list[tuple[str, str]] = []
        if self.window_duration_ns is not None:
            found.append(("window_duration", seconds(self.window_duration_ns)))
            found.append(("minimum_calls", str(self.minimum_calls)))
        elif self.minimum_calls != self.window_size:
            found.append(("minimum_calls", str(self.minimum_calls)))
        if self.slow_call_duration_ns is not None:
            found.append(("slow_call_duration", seconds(self.slow_call_duration_ns)))
            limit = Fraction(1) if self.slow_call_limit is None else self.slow_call_limit
            found.append(("slow_call_limit", f"{limit.numerator}/{limit.denominator}"))
        if self.cooldown_factor != 1.0:
            found.append(("cooldown_factor", f"{self.cooldown_factor:g}"))
        if self.max_cooldown_ns is not None:
            found.append(("max_cooldown", seconds(self.max_cooldown_ns)))
        return found


DEFAULT_CONFIG = Config.build()


class State(NamedTuple):
    """One breaker's state. A tuple, because a new one is built on most records.

    Lifetime counters are not part of it: they are bookkeeping of the store (one
    integer add per outcome), which lets a healthy breaker's record return the very
    same state object instead of building a new one.

    A count window (and every half-open window) is a bit set; a CLOSED time window
    is TIME_BUCKETS buckets of (calls, failures, slow calls) in a ring, and then
    ``window_len``/``window_failures``/``window_slow`` are the sums over its buckets.
    """

    state: CircuitState
    generation: int
    window_bits: int  # bit 0 = newest outcome; 1 = failure
    window_len: int
    window_failures: int
    failure_count: int  # consecutive failures, as 0.4.5's column
    open_until: int | None
    permits: tuple[int, ...]  # expiry times of outstanding trial permits, oldest first
    slow_bits: int = 0  # as window_bits; 1 = slow call
    window_slow: int = 0
    held: bool = False  # OPEN or DISABLED until an operator says otherwise
    last_cooldown: int = 0  # the latest opening's cooldown since the breaker last closed
    window_start: int | None = None  # when the time window's bucket 0 began
    bucket_head: int = 0  # number of the newest bucket, counted from window_start
    buckets: tuple[int, ...] = ()  # calls, then failures, then slow calls of each bucket

    @property
    def window(self) -> tuple[bool, ...]:
        """The window's outcomes, oldest first; True is a success (empty for a time window)."""
        if self.buckets:
            return ()
        bits = self.window_bits
        return tuple(not (bits >> i) & 1 for i in range(self.window_len - 1, -1, -1))


INITIAL = State(CLOSED, 0, 0, 0, 0, 0, None, ())
_new = tuple.__new__
_EMPTY_BUCKETS = (0,) * (3 * TIME_BUCKETS)
# Every field after failure_count, as a fresh CLOSED or HALF_OPEN phase has them.
_FRESH_TAIL = (None, (), 0, 0, False, 0, None, 0, ())
_HELD_RETRY_AFTER_NS = HELD_RETRY_AFTER // timedelta(microseconds=1) * _NS_PER_US


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
    if phase is DISABLED:
        return _new(Admission, (True, DISABLED, st.generation, None)), st
    if phase is OPEN:
        if st.held:
            wait = max(cfg.cooldown_ns, _HELD_RETRY_AFTER_NS)
            return _new(Admission, (False, OPEN, st.generation, wait)), st
        open_until = st.open_until
        if open_until is None:
            open_until = now
        if now < open_until:
            # A rejection while cooling down is every call of an OPEN breaker.
            return _new(Admission, (False, OPEN, st.generation, open_until - now)), st
        generation = st.generation + 1
        trial = (now + cfg.half_open_timeout_ns,)
        nxt = State(
            HALF_OPEN, generation, 0, 0, 0, st.failure_count, None, trial,
            last_cooldown=st.last_cooldown,
        )  # fmt: skip
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


def is_slow(cfg: Config, duration: int | None) -> bool:
    """Did a call that took ``duration`` nanoseconds take longer than the slow-call duration?"""
    limit = cfg.slow_call_duration_ns
    return limit is not None and duration is not None and duration > limit


def record(
    st: State,
    cfg: Config,
    now: int,
    success: bool,
    generation: int | None,
    duration: int | None = None,
) -> State:
    """Apply one call's outcome; returns the next state (``st`` itself if unchanged).

    ``duration`` (nanoseconds the call took, if measured) makes it a slow call when
    it exceeds the configured slow-call duration. ``now`` is only read when the
    outcome can trip or settle the breaker or lands in a time window.
    """
    # One unpacking instead of a field access per value: this is every call's path.
    phase, current, bits, length, in_window, failure_count, _, _, _, _, _, _, _, _, _ = st
    if phase is OPEN or phase is DISABLED or (generation is not None and generation != current):
        return st
    if phase is CLOSED:
        if not cfg.plain:
            return _record_closed(st, cfg, now, success, is_slow(cfg, duration))
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
        # A plain CLOSED state holds nothing past these six fields: no slow calls, no
        # hold, no cooldown streak (it ended when the breaker closed), no buckets.
        nxt = _new(
            State,
            (
                CLOSED,
                current,
                bits,
                length,
                in_window,
                failure_count,
                None,
                (),
                0,
                0,
                False,
                0,
                None,
                0,
                (),
            ),
        )
        if not success and length == size and in_window >= cfg.closed_trip:
            return _open(nxt, cfg, now)
        return nxt

    size = cfg.half_open_window
    permits = _live(st.permits, now)[1:]
    slow = is_slow(cfg, duration)
    bits, length, in_window = _append(st.window_bits, length, in_window, size, not success)
    slow_bits, slow_count = _slow_window(st, cfg, size, slow)
    failure_count = 0 if success else failure_count + 1
    nxt = st._replace(
        window_bits=bits,
        window_len=length,
        window_failures=in_window,
        failure_count=failure_count,
        permits=permits,
        slow_bits=slow_bits,
        window_slow=slow_count,
    )
    if length >= size:
        s = cfg.success_limit
        if s is not None:
            close = (length - in_window) * s.denominator >= s.numerator * size
        else:
            close = not _reaches(in_window, size, cfg.failure_limit)
        if close and not _reaches(slow_count, size, cfg.slow_call_limit):
            return _new(State, (CLOSED, current + 1, 0, 0, 0, failure_count, *_FRESH_TAIL))
        return _open(nxt, cfg, now)
    return nxt


def _reaches(count: int, total: int, limit: Fraction | None) -> bool:
    """count/total >= limit (never, without a limit or without outcomes)."""
    return limit is not None and total > 0 and count * limit.denominator >= limit.numerator * total


def _record_closed(st: State, cfg: Config, now: int, success: bool, slow: bool) -> State:
    """CLOSED with a time window, minimum calls or slow calls configured."""
    failure_count = 0 if success else st.failure_count + 1
    if cfg.window_duration_ns is not None:
        nxt = _bucket_add(st, cfg, now, success, slow)._replace(failure_count=failure_count)
    else:
        size = cfg.window_size
        bits, length, failures = _append(
            st.window_bits, st.window_len, st.window_failures, size, not success
        )
        slow_bits, slow_count = _slow_window(st, cfg, size, slow)
        nxt = st._replace(
            window_bits=bits,
            window_len=length,
            window_failures=failures,
            failure_count=failure_count,
            slow_bits=slow_bits,
            window_slow=slow_count,
        )
    # Only a failure or a slow call can raise a rate: nothing else is judged.
    if (success and not slow) or nxt.window_len < cfg.minimum_calls:
        return nxt
    calls = nxt.window_len
    if _reaches(nxt.window_failures, calls, cfg.failure_limit) or _reaches(
        nxt.window_slow, calls, cfg.slow_call_limit
    ):
        return _open(nxt, cfg, now)
    return nxt


def _bucket_add(st: State, cfg: Config, now: int, success: bool, slow: bool) -> State:
    """The time window with the buckets that expired by ``now`` emptied and one call added."""
    duration_us = cfg.window_duration_ns // _NS_PER_US  # type: ignore[operator]
    start = st.window_start
    buckets = st.buckets
    head = st.bucket_head
    calls, failures, slows = st.window_len, st.window_failures, st.window_slow
    if start is None or not buckets:
        start, head, buckets = now, 0, _EMPTY_BUCKETS
        calls = failures = slows = 0
    number = max(head, (now - start) // _NS_PER_US * TIME_BUCKETS // duration_us)
    ring = list(buckets)
    if number - head >= TIME_BUCKETS:
        ring = list(_EMPTY_BUCKETS)
        calls = failures = slows = 0
    else:
        for expired in range(head + 1, number + 1):
            i = expired % TIME_BUCKETS
            calls -= ring[i]
            failures -= ring[TIME_BUCKETS + i]
            slows -= ring[2 * TIME_BUCKETS + i]
            ring[i] = ring[TIME_BUCKETS + i] = ring[2 * TIME_BUCKETS + i] = 0
    i = number % TIME_BUCKETS
    ring[i] += 1
    calls += 1
    if not success:
        ring[TIME_BUCKETS + i] += 1
        failures += 1
    if slow:
        ring[2 * TIME_BUCKETS + i] += 1
        slows += 1
    return st._replace(
        window_len=calls,
        window_failures=failures,
        window_slow=slows,
        window_start=start,
        bucket_head=number,
        buckets=tuple(ring),
    )


def bucket_end(st: State, cfg: Config) -> int:
    """When a time window's newest bucket ends, on the clock of ``now``."""
    duration_us = cfg.window_duration_ns // _NS_PER_US  # type: ignore[operator]
    end_us = -(-(st.bucket_head + 1) * duration_us // TIME_BUCKETS)
    return (st.window_start or 0) + end_us * _NS_PER_US


def add_successes(st: State, count: int) -> State:
    """What ``count`` fast successes recorded before the newest bucket of a CLOSED time
    window ends make of it, as many ``record`` calls would."""
    ring = list(st.buckets)
    ring[st.bucket_head % TIME_BUCKETS] += count
    return st._replace(window_len=st.window_len + count, failure_count=0, buckets=tuple(ring))


def _slow_window(st: State, cfg: Config, size: int, slow: bool) -> tuple[int, int]:
    """The slow-call bits after one outcome; none are kept while slow calls are unused."""
    if cfg.slow_call_duration_ns is None:
        return 0, 0
    bits, _, count = _append(st.slow_bits, st.window_len, st.window_slow, size, slow)
    return bits, count


def _append(bits: int, length: int, count: int, size: int, flag: bool) -> tuple[int, int, int]:
    """A bit window after appending one outcome and keeping the newest ``size``."""
    bits <<= 1
    if flag:
        bits |= 1
        count += 1
    length += 1
    if length > size:
        # The outcome falling out of the window is the bit just past its end.
        if (bits >> size) & 1:
            count -= 1
        bits &= (1 << size) - 1
        length = size
    return bits, length, count


def next_cooldown(st: State, cfg: Config) -> int:
    """The cooldown of an opening now: the configured one, multiplied by the factor for
    each reopening since the breaker last closed, up to max_cooldown."""
    previous = st.last_cooldown
    if previous == 0 or cfg.cooldown_factor == 1:
        return cfg.cooldown_ns
    # Whole microseconds, one multiplication per reopening: IEEE doubles give PL/pgSQL
    # the very same value.
    grown = math.floor(previous // _NS_PER_US * cfg.cooldown_factor)
    cap = _CEILING_US if cfg.max_cooldown_ns is None else cfg.max_cooldown_ns // _NS_PER_US
    return min(grown, cap) * _NS_PER_US


def _open(st: State, cfg: Config, now: int) -> State:
    cooldown = next_cooldown(st, cfg)
    return st._replace(
        state=OPEN,
        generation=st.generation + 1,
        open_until=now + cooldown,
        permits=(),
        last_cooldown=cooldown,
    )


def release(st: State, cfg: Config, now: int, generation: int | None) -> State:
    """A call ended with an outcome that is not counted: the trial permit it held goes back."""
    if st.state is not HALF_OPEN or (generation is not None and generation != st.generation):
        return st
    return st._replace(permits=_live(st.permits, now)[1:])


def force(st: State, cfg: Config, now: int, target: CircuitState, *, hold: bool = False) -> State:
    """An operator's transition: OPEN for one cooldown (or held), DISABLED, or a fresh
    CLOSED/HALF_OPEN phase."""
    if hold and target is not OPEN and target is not DISABLED:
        raise ValueError(f"`hold` applies to OPEN and DISABLED only, not {target.value}")
    generation = st.generation + 1
    if target is OPEN:
        cooldown = 0 if hold else cfg.cooldown_ns
        return st._replace(
            state=OPEN,
            generation=generation,
            open_until=None if hold else now + cooldown,
            permits=(),
            held=hold,
            last_cooldown=cooldown,
        )
    return State(target, generation, 0, 0, 0, 0, None, (), held=target is DISABLED)


def reset(st: State) -> State:
    """Back to a fresh CLOSED breaker (releasing any hold); the generation still moves on."""
    return State(CLOSED, st.generation + 1, 0, 0, 0, 0, None, ())


def reconfigure(st: State, cfg: Config, old: Config | None = None) -> State:
    """Adopt a new configuration: only the window is trimmed to the phase's new size.

    A CLOSED window that changes kind (count or time) or duration starts afresh: its
    outcomes cannot be placed in the new one.
    """
    if st.state is CLOSED and (
        (old is not None and old.window_duration_ns != cfg.window_duration_ns)
        or bool(st.buckets) != (cfg.window_duration_ns is not None)
    ):
        return _new(State, (CLOSED, st.generation, 0, 0, 0, st.failure_count, *_FRESH_TAIL))
    if st.buckets:
        return st
    size = cfg.half_open_window if st.state is HALF_OPEN else cfg.window_size
    if st.window_len <= size:
        return st
    bits = st.window_bits & ((1 << size) - 1)
    slow_bits = st.slow_bits & ((1 << size) - 1)
    return st._replace(
        window_bits=bits,
        window_len=size,
        window_failures=bits.bit_count(),
        slow_bits=slow_bits,
        window_slow=slow_bits.bit_count(),
    )
