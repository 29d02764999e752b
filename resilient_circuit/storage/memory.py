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

from resilient_circuit import _machine
from resilient_circuit._machine import (
    CLOSED,
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
    check_admin_state,
    check_name,
)

__all__ = ("InMemoryStorage",)

_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__


class _Counter:
    """A lifetime counter that threads may bump without a lock.

    ``itertools.count.__next__`` is atomic under the GIL; its value is read back
    from its repr (``count(N)``), which only snapshots and admin reads do.
    """

    __slots__ = ("_count", "add")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.add = self._count.__next__

    @property
    def value(self) -> int:
        return int(repr(self._count)[6:-1])


class MemoryBreaker(Breaker):
    """One breaker: its state and configuration, swapped under its store's lock."""

    __slots__ = (
        "__weakref__",
        "_admin_open_until",
        "_admit_closed",
        "_clock",
        "_failures",
        "_forgotten",
        "_lock",
        "_rejecting",
        "_steady",
        "_successes",
        "config",
        "namespace",
        "resource_key",
        "state",
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
        self.state = _machine.INITIAL
        self._successes = _Counter()
        self._failures = _Counter()
        self._lock = lock
        self._clock = clock
        self._admit_closed = Admission(True, CLOSED, 0, None)
        # A state the machine returned unchanged for a success of its own generation:
        # a full window of successes, which every success of a healthy breaker meets.
        # States are immutable, so the machine's answer holds for as long as the state
        # object is current (configure swaps in a fresh one).
        self._steady: State | None = None
        # The state last rejected, until when, and the reply's state and generation
        # (one tuple, so that it is read and replaced at once).
        self._rejecting: tuple[State | None, int, CircuitState, int] = (None, 0, CLOSED, 0)
        # The epoch seconds an admin ``set_state`` gave its OPEN state, which
        # ``get_state`` reports as given for as long as that state is current.
        self._admin_open_until: tuple[State, float] | None = None
        # The fresh state delete_state left: until it moves on, the breaker reads as
        # never stored (get_state None), although a policy may still hold it.
        self._forgotten: State | None = None

    @property
    def last_known(self) -> State:
        return self.state

    def acquire(self) -> Admission:
        st = self.state
        if st.state is CLOSED:
            # CLOSED admits without changing anything: no lock, and the same reply
            # object for every call of a generation.
            admission = self._admit_closed
            if admission.generation != st.generation:
                admission = self._admit_closed = Admission(True, CLOSED, st.generation, None)
            return admission
        now = self._clock()
        rejecting, until, phase, generation = self._rejecting
        if rejecting is st and now < until:
            # The machine rejected this very state until `until`: a verdict that holds
            # for every call before then, as its retry_after says (an OPEN breaker
            # cooling down; trials all out). Any change of state is a new object.
            return _new(Admission, (False, phase, generation, until - now))
        # Decide optimistically on the state as read; lock only to change it.
        admission, nxt = _machine.try_acquire(st, self.config, now)
        if nxt is st:
            if not admission.permitted and admission.retry_after:
                until = now + admission.retry_after
                self._rejecting = (st, until, admission.state, admission.generation)
            return admission
        with self._lock:
            admission, self.state = _machine.try_acquire(self.state, self.config, self._clock())
        return admission

    def record(self, success: bool, generation: int | None) -> State:
        st = self.state
        if success:
            self._successes.add()
            if st is self._steady:
                return st
        else:
            self._failures.add()
        if st.state is CLOSED:
            # A CLOSED outcome is decided on the state as read, outside the lock, and
            # swapped in under it if nobody changed the breaker meanwhile. The machine
            # reads the clock only to trip (a result still CLOSED did not use it), so
            # none is read here; a trip is recomputed under the lock with the time.
            nxt = _machine.record(st, self.config, 0, success, generation)
            if nxt is st:
                if success and generation == st.generation:
                    self._steady = st
                return st
            if nxt.state is CLOSED:
                with self._lock:
                    if self.state is st:
                        self.state = nxt
                        return nxt
                    return self._apply(success, generation)
        with self._lock:
            return self._apply(success, generation)

    def _apply(self, success: bool, generation: int | None) -> State:
        st = self.state = _machine.record(
            self.state, self.config, self._clock(), success, generation
        )
        return st

    @property
    def successes(self) -> int:
        return self._successes.value

    @property
    def failures(self) -> int:
        return self._failures.value

    def force(self, state: CircuitState) -> State:
        with self._lock:
            st = self.state = _machine.force(self.state, self.config, self._clock(), state)
        return st

    def reset(self) -> State:
        with self._lock:
            st = self.state = _machine.reset(self.state)
            self._successes = _Counter()
            self._failures = _Counter()
        return st

    def configure(self, config: Config) -> State:
        with self._lock:
            self.config = config
            st = _machine.reconfigure(self.state, config)
            # Always a fresh object: a decision computed on the current one under the
            # old configuration (the _steady memo, a record's swap) then never applies.
            st = self.state = State._make(st)
        return st

    def snapshot(self) -> Snapshot:
        with self._lock:
            st, cfg, now = self.state, self.config, self._clock()
            successes, failures = self.successes, self.failures
        remaining = None
        if st.state is OPEN and st.open_until is not None:
            remaining = timedelta(microseconds=max(0, st.open_until - now) // 1000)
        capacity = cfg.half_open_window if st.state is HALF_OPEN else cfg.window_size
        return Snapshot(
            state=st.state,
            generation=st.generation,
            window=st.window,
            window_capacity=capacity,
            failure_count=st.failure_count,
            open_remaining=remaining,
            permits=len(st.permits),
            successes=successes,
            failures=failures,
        )

    async def aacquire(self) -> Admission:
        return self.acquire()

    async def arecord(self, success: bool, generation: int | None) -> State:
        return self.record(success, generation)

    async def aforce(self, state: CircuitState) -> State:
        return self.force(state)

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
            st = oldest.state
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
        check_name(resource_key, "resource_key")
        key = (namespace or self.namespace, resource_key)
        with self._lock:
            found = self._breakers.pop(key, None) or self._released.get(key)
            if found is None:
                return False
            self._released[key] = found
            if found.state is found._forgotten:
                return False  # deleted before and untouched since
        found._forgotten = found.reset()
        return True

    def get_state(self, resource_key: str, namespace: str | None = None) -> dict[str, Any] | None:
        found = self._existing(resource_key, namespace)
        if found is None:
            return None
        with self._lock:
            st, now = found.state, self._clock()
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
        admin = check_admin_state(resource_key, state, failure_count, open_until, execution_log)
        target, window = admin.state, admin.window
        ns = namespace or self.namespace
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
            old = found.state
            found.state = State(
                target,
                old.generation + 1,
                bits,
                len(window),
                bits.bit_count(),
                failure_count,
                until,
                (),
            )
            found._admin_open_until = (
                (found.state, admin.open_until) if target is OPEN and admin.open_until else None
            )
