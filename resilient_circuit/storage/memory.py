"""Breakers in this process's memory, driven by the pure state machine."""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from resilient_circuit import _fork, _machine
from resilient_circuit._machine import (
    CLOSED,
    DISABLED,
    HALF_OPEN,
    OPEN,
    Admission,
    CircuitState,
    Config,
    State,
)
from resilient_circuit._settings import default_namespace
from resilient_circuit.storage.base import (
    Breaker,
    CircuitBreakerStorage,
    Snapshot,
    Verdict,
    check_admin_state,
    check_key_and_namespace,
    check_name,
)

__all__ = ("InMemoryStorage",)

_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__

# See MemoryBreaker._timed.
_Timed = tuple[State, int, int, "itertools.count[int]", "_Counter", list[int]]
# What _window_generation holds while the state is not a live count window: equal to no generation
# (None included), so that one comparison tells whether an outcome may take the fast path.
_NOT_LIVE = object()
# A count window wider than this many outcomes is kept in a ring (a list of 0 and 1, whose
# item reads and writes the interpreter specialises, unlike a bytearray's), not shifted as an
# int: the interpreter's ints of one digit (30 bits) are cheap; past that every shift and
# subtraction allocates a new int as long as the window (see _WideWindowBreaker).
_NARROW_WINDOW = 29
_TO_OUTCOMES = bytes.maketrans(b"01", b"\x00\x01")
_TO_DIGITS = bytes.maketrans(b"\x00\x01", b"01")


class _Counter:
    """A lifetime counter that threads may bump without a lock.

    ``next(ticks)`` is atomic under the GIL (and cheaper than calling ``add``, a
    method-wrapper); the value is read back from its repr (``count(N)``), which only
    snapshots and admin reads do.
    """

    __slots__ = ("add", "ticks")

    def __init__(self) -> None:
        self.ticks = itertools.count()
        self.add = self.ticks.__next__

    @property
    def value(self) -> int:
        return int(repr(self.ticks)[6:-1])


class MemoryBreaker(Breaker):
    """One breaker: its state and configuration, swapped under its store's lock."""

    __slots__ = (
        "__weakref__",
        "_admin_open_until",
        "_admit_closed",
        "_clock",
        "_failures",
        "_fast_successes",
        "_forgotten",
        "_lock",
        "_locked_successes",
        "_placed",
        "_state",
        "_steady",
        "_successes",
        "_timed",
        "_wide_generation",
        "_window_bits",
        "_window_failures",
        "_window_generation",
        "_window_len",
        "_window_mask",
        "_window_pos",
        "_window_ring",
        "_window_size",
        "_window_streak",
        "_window_top",
        "_window_trip",
        "admitting",
        "config",
        "namespace",
        "rejecting",
        "resource_key",
    )

    def __init__(
        self,
        resource_key: str,
        namespace: str,
        config: Config,
        lock: threading.Lock,
        clock: Callable[[], int],
    ) -> None:
        self.resource_key = resource_key
        self.namespace = namespace
        self.config = config
        self._state = _machine.INITIAL
        # Lifetime counters: the successes that change nothing are counted without the
        # lock (_successes); every other outcome is counted under it, as a plain int.
        self._successes = _Counter()
        self._locked_successes = 0
        self._failures = 0
        self._lock = lock
        self._clock = clock
        # (a CLOSED state, the reply that admits under it), one tuple replaced at once.
        self._admit_closed: tuple[State | None, Admission] = (
            None,
            Admission(True, CLOSED, 0, None),
        )
        # Published for the decorator (Breaker.admitting) while the state is CLOSED:
        # the same reply acquire gives, set and withdrawn by _commit under the lock.
        self.admitting: Admission | None = self._admit_closed[1]
        # The current state while a success changes nothing in it: CLOSED with a full
        # count window of successes and no failure streak, which every success of a
        # healthy breaker meets. Read without the lock: every change of the window or
        # of the state clears it first, so whenever it is set it is the current state.
        self._steady: State | None = None
        # A CLOSED count window of a plain configuration (see Config.plain) is kept in
        # the slots below, which the machine's CLOSED step updates in place under the
        # lock, instead of in a new State per outcome: _window_generation is its generation
        # (_NOT_LIVE when the state is anything else) and _state's window is then the
        # one it had when it became current, until _settled() writes the slots back
        # into a State (when they differ from its window). The step is the machine's
        # own, on the same integers; a trip is left to the machine.
        self._window_generation: int | object = _NOT_LIVE
        self._window_bits = self._window_len = self._window_failures = self._window_streak = 0
        self._window_size = self._window_trip = self._window_top = self._window_mask = 0
        # A window wider than _NARROW_WINDOW is live under _wide_generation instead (and
        # _window_generation is _NOT_LIVE): its outcomes in _window_ring, oldest at
        # _window_pos, in place of _window_bits.
        self._wide_generation: int | object = _NOT_LIVE
        self._window_ring: list[int] = []
        self._window_pos = 0
        # The machine's rejection of the current state, while it holds (see
        # Breaker.rejecting): published by acquire, withdrawn by _commit.
        self.rejecting: Verdict | None = None
        # The epoch seconds an admin ``set_state`` gave its OPEN state, which
        # ``get_state`` reports as given for as long as that state is current.
        self._admin_open_until: tuple[State, float] | None = None
        # The fresh state delete_state left: until it moves on, the breaker reads as
        # never stored (get_state None), although a policy may still hold it.
        self._forgotten: State | None = None
        # A time window's successes within its newest bucket are only counted, without
        # the lock, and placed in the bucket before anything else reads or changes the
        # state: (the state they belong to, its generation, when its newest bucket ends,
        # the counter's add, the counter, [its final value once retired]). These
        # successes are counted in the lifetime counter through it, not _successes.
        self._timed: _Timed | None = None
        self._placed = 0  # the part of the counter already placed in the window
        self._fast_successes = 0  # the final values of retired counters

    @property
    def state(self) -> State:
        """The state as the machine defines it (counted successes placed)."""
        if (
            self._timed is None
            and self._window_generation is _NOT_LIVE
            and self._wide_generation is _NOT_LIVE
        ):
            return self._state
        with self._lock:
            return self._settled()

    @state.setter
    def state(self, st: State) -> None:
        with self._lock:
            self._settled()
            self._commit(st)

    @property
    def last_known(self) -> State:
        # Its state and generation are current; its window may not be (see _window_generation).
        return self._state

    def acquire(self) -> Admission:
        st = self._state
        admitted = self._admit_closed
        if admitted[0] is st:
            # The CLOSED state this reply was made for is still current: one identity
            # test (a field of a NamedTuple is an attribute lookup, not a slot's).
            return admitted[1]
        if st.state is CLOSED:
            # CLOSED admits without changing anything: no lock, and the same reply
            # object for every call of a generation.
            admission = admitted[1]
            if admission.generation != st.generation:
                admission = Admission(True, CLOSED, st.generation, None)
            self._admit_closed = (st, admission)
            return admission
        now = self._clock()
        held = self.rejecting
        if held is not None and held[5] is st and now < held[0]:
            # The machine rejected this very state until then: a verdict that holds for
            # every call before it, as its retry_after says (an OPEN breaker cooling
            # down; trials all out). Any change of state is a new object.
            return _new(Admission, (False, held[2], held[3], held[4] - now))
        # Decide optimistically on the state as read; lock only to change it.
        admission, nxt = _machine.try_acquire(st, self.config, now)
        if nxt is st:
            if not admission.permitted and admission.retry_after:
                until = now + admission.retry_after
                self.rejecting = (
                    until,
                    self._clock,
                    admission.state,
                    admission.generation,
                    until,
                    st,
                )
                if self._state is not st:
                    # Changed meanwhile: _commit may have withdrawn verdicts before
                    # this one was published.
                    self.rejecting = None
            return admission
        with self._lock:
            admission, nxt = _machine.try_acquire(self._settled(), self.config, self._clock())
            self._commit(nxt)
        return admission

    def record(self, success: bool, generation: int | None, duration: int | None = None) -> State:
        """Apply one outcome. The reply's state and generation are current; its window
        is not always (a live count window or a time window's counted successes are
        placed in a State when the state is read: ``state``, ``snapshot``)."""
        if success:
            timed = self._timed
            if timed is None:
                st = self._state
                if st is self._steady:
                    self._successes.add()
                    return st
            else:
                # A time window is never steady (_steady is a count window's): its
                # success tests only _timed. The clock read through a local: calling a
                # slot's value as a method is not specialised by the interpreter,
                # calling a local is.
                clock = self._clock
                if generation == timed[1] and clock() < timed[2]:
                    # Counted as of the state that published it: one a locked change
                    # made since then is still of this generation, and so later, not
                    # different.
                    ticket = next(timed[3])
                    if self._timed is not timed:
                        self._late(timed, ticket)
                    return timed[0]
        # lock.acquire() and release() cost half of what ``with lock`` does.
        self._lock.acquire()
        try:
            if generation == self._window_generation:
                # _machine.record's CLOSED step of a plain configuration, on the
                # live window: the same integers, without a State built per call.
                # The bits shifted by an addition, and the bit shifted past a full
                # window (to _window_top, the outcome falling out) tested by a
                # comparison and cleared by a subtraction: the interpreter
                # specialises these for small ints, not <<, & and ^.
                bits = self._window_bits
                bits += bits
                length = self._window_len
                if success:
                    self._locked_successes += 1
                    if bits >= self._window_top:
                        bits -= self._window_top
                        self._window_failures -= 1
                    elif length < self._window_size:
                        self._window_len = length = length + 1
                    self._window_bits = bits
                    self._window_streak = 0
                    # A success never makes a steady state unsteady: _steady is left
                    # as it is (None, or this very state) unless this one steadies it.
                    if not bits and length == self._window_size:
                        self._steady = self._state
                    return self._state
                self._failures += 1
                if bits >= self._window_top:
                    # A failure in, a failure out: the count stays, and so does the
                    # verdict on it. _steady is None already (the window held a failure).
                    if self._window_failures < self._window_trip:
                        # One subtraction clears the bit shifted out and sets the new
                        # one: a 1000-bit window allocates one int fewer.
                        self._window_bits = bits - self._window_mask
                        self._window_streak += 1
                        return self._state
                    return self._apply(success, generation, duration, False)
                failures = self._window_failures + 1
                if length < self._window_size:
                    length += 1
                if failures < self._window_trip or length < self._window_size:
                    self._steady = None
                    self._window_bits = bits + 1
                    self._window_len = length
                    self._window_failures = failures
                    self._window_streak += 1
                    return self._state
                # A trip: the machine decides, with the time, on the state as the
                # window left it.
                return self._apply(success, generation, duration, False)
            # Not a live count window (any more): the machine decides.
            return self._apply(success, generation, duration)
        finally:
            self._lock.release()

    def _apply(
        self, success: bool, generation: int | None, duration: int | None, count: bool = True
    ) -> State:
        """The machine's step (lock held); ``count``: not yet in the lifetime counters."""
        if count:
            if success:
                self._locked_successes += 1
            else:
                self._failures += 1
        st = _machine.record(
            self._settled(), self.config, self._clock(), success, generation, duration
        )
        return self._commit(st)

    def _commit(self, st: State) -> State:
        """Make ``st`` current (lock held, counted successes placed), keeping the unlocked
        success path of a CLOSED time window, and the live count window, in step with it."""
        self._steady = None
        self._state = st
        self.rejecting = None  # after the swap: see acquire, which publishes it
        if st.state is CLOSED:
            # CLOSED admits every call with one reply per generation (see acquire).
            admission = self._admit_closed[1]
            if admission.generation != st.generation:
                admission = Admission(True, CLOSED, st.generation, None)
            self._admit_closed = (st, admission)
            self.admitting = admission
        else:
            self.admitting = None
        cfg = self.config
        if st.state is CLOSED and cfg.plain and not st.buckets and st.window_len <= cfg.window_size:
            self._window_bits = bits = st.window_bits
            self._window_len = length = st.window_len
            self._window_failures = st.window_failures
            self._window_streak = st.failure_count
            self._window_size = cfg.window_size
            self._window_top = 1 << cfg.window_size
            self._window_mask = self._window_top - 1
            self._window_trip = cfg.closed_trip
            if cfg.window_size > _NARROW_WINDOW:
                # Oldest first, then rotated by _window_pos as outcomes come in.
                digits = format(bits, f"0{cfg.window_size}b").encode()
                self._window_ring = list(digits.translate(_TO_OUTCOMES))
                self._window_pos = 0
                self._window_generation = _NOT_LIVE
                self._wide_generation = st.generation
                self.__class__ = _WideWindowBreaker
            else:
                self._window_generation = st.generation
                self._wide_generation = _NOT_LIVE
                self.__class__ = MemoryBreaker
            if bits == 0 and length == cfg.window_size and st.failure_count == 0:
                self._steady = st
        else:
            self._window_generation = self._wide_generation = _NOT_LIVE
            self.__class__ = MemoryBreaker
        timed = self._timed
        if timed is not None and (timed[1] != st.generation or not st.buckets):
            # Unpublish first, then read: every success counted before the read is in
            # the final value; one counted after it finds out in _late.
            self._timed = None
            final = timed[4].value
            timed[5].append(final)
            self._fast_successes += final
            timed = None
        # Only a fast success is a plain count: with slow calls configured every
        # success is weighed by the machine.
        if st.state is CLOSED and st.buckets and self.config.slow_call_duration_ns is None:
            if timed is None:
                counter = _Counter()
                self._placed = 0
                timed = (st, st.generation, 0, counter.ticks, counter, [])
            self._timed = (st, st.generation, _machine.bucket_end(st, self.config), *timed[3:])
        return st

    def _mend(self) -> None:
        """After a fork (no other thread exists): what a thread of the parent may have left
        half-made. The live window's failure count is read again from its outcomes; a
        published admission or verdict that is not the current state's is published
        again from it (a _commit cut off between the swap and the publication)."""
        if self._window_generation is not _NOT_LIVE:
            self._window_failures = self._window_bits.bit_count()
        elif self._wide_generation is not _NOT_LIVE:
            self._window_failures = sum(self._window_ring)
        st, held, admitting = self._state, self.rejecting, self.admitting
        if (
            (held is not None and held[5] is not st)
            or (admitting is None) == (st.state is CLOSED)
            or (admitting is not None and admitting.generation != st.generation)
        ):
            self._commit(self._settled())

    def _late(self, timed: _Timed, ticket: int) -> None:
        """A success counted without the lock while the state changed: if its counter was
        retired before it counted, it belongs to an older generation (not in the window)
        and only the lifetime counter takes it."""
        with self._lock:
            if timed[5] and ticket >= timed[5][0]:
                self._fast_successes += 1

    def _settled(self) -> State:
        """The current state with the successes counted outside the lock placed, and the
        live count window written back (lock held)."""
        st = self._state
        live = self._window_generation is not _NOT_LIVE
        if live or self._wide_generation is not _NOT_LIVE:
            bits = self._window_bits
            if not live:
                pos, ring = self._window_pos, self._window_ring
                bits = int(bytes(ring[pos:] + ring[:pos]).translate(_TO_DIGITS), 2)
            # Compared rather than flagged by every outcome: a store per call saved.
            moved = (
                bits != st.window_bits
                or self._window_len != st.window_len
                or self._window_failures != st.window_failures
                or self._window_streak != st.failure_count
            )
        else:
            moved = False
        if moved:
            # As _machine.record builds a plain CLOSED state: nothing past the window.
            steady = self._steady is not None
            self._steady = None
            st = self._state = _new(
                State,
                (
                    CLOSED,
                    st.generation,
                    bits,
                    self._window_len,
                    self._window_failures,
                    self._window_streak,
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
            if steady:
                self._steady = st
            return st
        timed = self._timed
        if timed is None:
            return st
        counted = timed[4].value
        pending = counted - self._placed
        if pending:
            self._placed = counted
            st = self._state = _machine.add_successes(st, pending)
            self._timed = (st, *timed[1:])
        return st

    def release(self, generation: int | None) -> State:
        with self._lock:
            st = _machine.release(self._settled(), self.config, self._clock(), generation)
            return self._commit(st)

    @property
    def successes(self) -> int:
        timed = self._timed
        live = 0 if timed is None else timed[4].value
        return self._successes.value + self._locked_successes + self._fast_successes + live

    @property
    def failures(self) -> int:
        return self._failures

    def force(self, state: CircuitState, *, hold: bool = False) -> State:
        with self._lock:
            st = _machine.force(self._settled(), self.config, self._clock(), state, hold=hold)
            return self._commit(st)

    def reset(self) -> State:
        with self._lock:
            st = self._commit(_machine.reset(self._settled()))
            self._successes = _Counter()
            self._locked_successes = self._failures = 0
            self._fast_successes = 0
        return st

    def configure(self, config: Config) -> State:
        with self._lock:
            old, self.config = self.config, config
            st = _machine.reconfigure(self._settled(), config, old)
            # Always a fresh object: a decision computed on the current one under the
            # old configuration (the _steady memo, a record's swap) then never applies.
            return self._commit(State._make(st))

    def snapshot(self) -> Snapshot:
        with self._lock:
            st, cfg, now = self._settled(), self.config, self._clock()
            successes, failures = self.successes, self.failures
        remaining = None
        if st.state is OPEN and st.open_until is not None:
            remaining = timedelta(microseconds=max(0, st.open_until - now) // 1000)
        if st.buckets:
            # A time window keeps counts, not an order: its successes, then its failures.
            ok = st.window_len - st.window_failures
            window = (True,) * ok + (False,) * st.window_failures
            capacity = max(cfg.minimum_calls, st.window_len)
        else:
            window = st.window
            capacity = cfg.half_open_window if st.state is HALF_OPEN else cfg.window_size
        return Snapshot(
            state=st.state,
            generation=st.generation,
            window=window,
            window_capacity=capacity,
            failure_count=st.failure_count,
            open_remaining=remaining,
            permits=len(st.permits),
            successes=successes,
            failures=failures,
        )

    async def aacquire(self) -> Admission:
        return self.acquire()

    async def arecord(
        self, success: bool, generation: int | None, duration: int | None = None
    ) -> State:
        return self.record(success, generation, duration)

    async def arelease(self, generation: int | None) -> State:
        return self.release(generation)

    async def aforce(self, state: CircuitState, *, hold: bool = False) -> State:
        return self.force(state, hold=hold)

    async def areset(self) -> State:
        return self.reset()

    async def asnapshot(self) -> Snapshot:
        return self.snapshot()


class InMemoryStorage(CircuitBreakerStorage):
    """Breakers shared by the policies of one process that use this storage object.

    Thread-safe; the lock is held only while the state machine computes the next
    state, never while a protected function runs. ``clock`` (monotonic nanoseconds)
    is injectable so tests can move time without sleeping.

    ``max_entries`` (0.8.6) bounds how many breakers the storage keeps, evicting the
    least recently bound or administered one; a breaker OPEN and still cooling down
    is never evicted (the bound may then be exceeded for a while), and one that a
    policy still holds is found again under its key rather than replaced. None (the
    default, as in 0.4.5) keeps every breaker.
    """

    backend_name = "in-memory"

    def __init__(
        self,
        *,
        namespace: str | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        max_entries: int | None = None,
    ) -> None:
        if not callable(clock):
            raise TypeError("`clock` must be callable")
        if max_entries is not None:
            if isinstance(max_entries, bool) or not isinstance(max_entries, int):
                raise TypeError("`max_entries` must be an int or None")
            if max_entries < 1:
                raise ValueError(f"`max_entries` must be >= 1, got {max_entries}")
        self.namespace = check_name(
            namespace if namespace is not None else default_namespace(), "namespace"
        )
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently used first, when bounded.
        self._breakers: OrderedDict[tuple[str, str], MemoryBreaker] = OrderedDict()
        # Breakers evicted or deleted while a policy may still hold them: found again
        # by key while held, so one key never has two breakers in one storage.
        self._released: weakref.WeakValueDictionary[tuple[str, str], MemoryBreaker] = (
            weakref.WeakValueDictionary()
        )
        _fork.after_fork_in_child(self, InMemoryStorage._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: a lock that a thread of the parent held at the fork would
        stay held for ever (that thread is not in the child), so the store and its
        breakers get a new one; a change that thread left half-made is made whole."""
        lock = threading.Lock()
        self._lock = lock
        for breaker in [*self._breakers.values(), *self._released.values()]:
            breaker._lock = lock
            breaker._mend()

    # -- the bound (call with the lock held) ------------------------------------------

    def _lookup(self, key: tuple[str, str]) -> MemoryBreaker | None:
        """The breaker of ``key``, marked as just used."""
        found = self._breakers.get(key)
        if found is not None:
            if self.max_entries is not None:
                self._breakers.move_to_end(key)
            return found
        found = self._released.pop(key, None)
        if found is not None:
            self._keep(key, found)
        return found

    def _keep(self, key: tuple[str, str], breaker: MemoryBreaker) -> None:
        self._breakers[key] = breaker
        if self.max_entries is not None and len(self._breakers) > self.max_entries:
            self._evict(self.max_entries)

    def _evict(self, bound: int) -> None:
        # O(1) per insertion: at most two of the oldest entries are looked at. A
        # live OPEN one goes back to the newest end instead, so a crowd of them
        # only delays shrinking back under the bound until they cool down.
        now = self._clock()
        for _ in range(min(2, len(self._breakers) - 1)):
            if len(self._breakers) <= bound:
                return
            key, oldest = self._breakers.popitem(last=False)
            st = oldest._state
            if st.state is OPEN and st.open_until is not None and st.open_until > now:
                self._breakers[key] = oldest
                continue
            self._released[key] = oldest

    def breaker(
        self,
        resource_key: str,
        namespace: str,
        config: Config,
        *,
        admission: Literal["strict", "cached"] = "strict",
        recording: Literal["immediate", "batched"] = "immediate",
        on_storage_error: Literal["open", "closed", "local"] = "open",
    ) -> MemoryBreaker:
        if admission not in ("strict", "cached"):
            raise ValueError(f"`admission` must be 'strict' or 'cached', got {admission!r}")
        if recording not in ("immediate", "batched"):
            raise ValueError(f"`recording` must be 'immediate' or 'batched', got {recording!r}")
        key = (namespace, resource_key)
        with self._lock:
            found = self._lookup(key)
            if found is None:
                found = MemoryBreaker(resource_key, namespace, config, self._lock, self._clock)
                self._keep(key, found)
                return found
        found.configure(config)
        return found

    def _existing(self, resource_key: str, namespace: str | None) -> MemoryBreaker | None:
        with self._lock:
            return self._lookup((namespace or self.namespace, resource_key))

    def delete_state(self, resource_key: str, namespace: str | None = None) -> bool:
        """Forget a breaker (0.8.6): True if it existed.

        A policy still holding it sees a breaker never used: CLOSED, empty window,
        counters at zero.
        """
        resource_key, ns = check_key_and_namespace(resource_key, namespace, self.namespace)
        key = (ns, resource_key)
        with self._lock:
            found = self._breakers.pop(key, None) or self._released.get(key)
            if found is None:
                return False
            self._released[key] = found
            if found._settled() is found._forgotten:
                return False  # deleted before and untouched since
        found._forgotten = found.reset()
        return True

    def get_state(self, resource_key: str, namespace: str | None = None) -> dict[str, Any] | None:
        resource_key, namespace = check_key_and_namespace(resource_key, namespace, self.namespace)
        found = self._existing(resource_key, namespace)
        if found is None:
            return None
        with self._lock:
            st, now = found._settled(), self._clock()
        if st is found._forgotten:
            return None
        open_until = 0.0
        admin = found._admin_open_until
        if admin is not None and admin[0] is st:
            open_until = admin[1]  # as set_state gave it, not as the clock rounds it
        elif st.state is OPEN and st.open_until is not None:
            open_until = time.time() + (st.open_until - now) / 1e9
        return {
            "state": st.state.value,
            "failure_count": st.failure_count,
            "open_until": open_until,
            "execution_log": list(st.window),
            "generation": st.generation,
        }

    def set_state(
        self,
        resource_key: str,
        state: str,
        failure_count: int,
        open_until: float,
        execution_log: list[bool] | None = None,
        namespace: str | None = None,
    ) -> None:
        resource_key, ns = check_key_and_namespace(resource_key, namespace, self.namespace)
        admin = check_admin_state(resource_key, state, failure_count, open_until, execution_log)
        target, window = admin.state, admin.window
        found = self._existing(resource_key, ns) or self.breaker(
            resource_key, ns, _machine.DEFAULT_CONFIG
        )
        with self._lock:
            now = self._clock()
            cfg = found.config
            capacity = cfg.half_open_window if target is HALF_OPEN else cfg.window_size
            window = window[-capacity:]
            bits = 0
            for ok in window:
                bits = (bits << 1) | (not ok)
            until = None
            if target is OPEN:
                seconds = admin.open_until
                until = now + max(0, int((seconds - time.time()) * 1e9)) if seconds else now
            old = found._settled()
            found._commit(
                State(
                    target,
                    old.generation + 1,
                    bits,
                    len(window),
                    bits.bit_count(),
                    failure_count,
                    until,
                    (),
                    held=target is DISABLED,
                )
            )
            found._admin_open_until = (
                (found._state, admin.open_until) if target is OPEN and admin.open_until else None
            )


class _WideWindowBreaker(MemoryBreaker):
    """A MemoryBreaker whose live count window is wider than _NARROW_WINDOW outcomes.

    _commit makes a breaker one (by its class, so that neither record pays a test per
    call) while such a window is live. Its step is MemoryBreaker.record's on the ring:
    the outcome falling out read, the new one written, one item each, whatever the
    width (at 8 bytes an outcome). Either class's record is right for any state:
    MemoryBreaker.record leaves a wide window to the machine, this one anything but a
    live wide window to it.
    """

    __slots__ = ()

    def record(self, success: bool, generation: int | None, duration: int | None = None) -> State:
        if success:
            st = self._state
            if st is self._steady:
                self._successes.add()
                return st
        self._lock.acquire()
        try:
            if generation == self._wide_generation:
                ring = self._window_ring
                pos = self._window_pos
                out = ring[pos]
                length = self._window_len
                size = self._window_size
                if success:
                    self._locked_successes += 1
                    ring[pos] = 0
                    if out:
                        self._window_failures -= 1
                    elif length < size:
                        self._window_len = length = length + 1
                    pos += 1
                    self._window_pos = 0 if pos == size else pos
                    self._window_streak = 0
                    if not self._window_failures and length == size:
                        self._steady = self._state
                    return self._state
                self._failures += 1
                failures = self._window_failures + 1 - out
                if length < size:
                    length += 1
                if failures < self._window_trip or length < size:
                    self._steady = None
                    ring[pos] = 1
                    pos += 1
                    self._window_pos = 0 if pos == size else pos
                    self._window_len = length
                    self._window_failures = failures
                    self._window_streak += 1
                    return self._state
                # A trip: the machine decides on the window as it was.
                return self._apply(success, generation, duration, False)
            return self._apply(success, generation, duration)
        finally:
            self._lock.release()
