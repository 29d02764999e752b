"""The circuit breaker policy: admission, then the call, then its outcome recorded.

The state machine runs in the storage (PostgreSQL's functions or the in-memory
port); the policy only asks it for admission, runs the function with no lock held,
and reports the outcome with the generation it was admitted under.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import timedelta
from fractions import Fraction
from types import FrameType
from typing import Any, Literal, Protocol, TypeVar, cast

from resilient_circuit import _fork
from resilient_circuit._drivers import OptionDrivers, exception_types, handle_all, run_listener
from resilient_circuit._machine import (
    DEFAULT_HALF_OPEN_TIMEOUT,
    Admission,
    CircuitState,
    Config,
    as_timedelta,
    parse_state,
    to_ns,
)
from resilient_circuit._settle import NOTHING, RELEASE, SUCCESS, Settle, decide
from resilient_circuit.exceptions import ProtectedCallError
from resilient_circuit.instrumentation import _events
from resilient_circuit.instrumentation.hooks import Hook, TransitionSource, checked_hooks
from resilient_circuit.policy import ProtectionPolicy
from resilient_circuit.storage import CircuitBreakerStorage, InMemoryStorage, create_storage
from resilient_circuit.storage.base import (
    MAX_KEY_LENGTH,
    Breaker,
    Observed,
    Snapshot,
    StorageError,
    StorageErrorMode,
    Verdict,
    check_name,
)

__all__ = (
    "DEFAULT_ADMISSION_REFRESH_INTERVAL",
    "CircuitProtectorPolicy",
    "CircuitState",
    "CircuitStatus",
    "ExecutionLog",
    "StatusChangeListener",
)

CircuitStatus = CircuitState  # 0.4.5's name for the same enum

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)

# At most one log line per policy this often for outcomes the store failed to record.
_RECORD_ERROR_LOG_INTERVAL = 10.0


class _Unpublished:
    """In place of a breaker handle whose standing rejections the decorator must not use."""

    __slots__ = ()
    rejecting: Verdict | None = None
    admitting: Admission | None = None


_UNPUBLISHED = _Unpublished()
# What the fast drivers read as the admission when the store could not answer.
_OUTAGE = Admission(True, CircuitState.CLOSED, -2, None)


class StatusChangeListener(Protocol):
    """``on_status_change(policy, old, new)``: called once per transition seen."""

    def __call__(
        self, policy: CircuitProtectorPolicy, old: CircuitState, new: CircuitState
    ) -> None: ...


class _NotSet:
    def __repr__(self) -> str:
        return "Fraction(1, 1)"


_NOT_SET: Any = _NotSet()


#: 0.8.6's default bound on how stale an admission may be. Passing it (or any positive
#: ``admission_refresh_interval``) selects cached admission, whose staleness is far
#: below it; see ``_admission_mode``.
DEFAULT_ADMISSION_REFRESH_INTERVAL = timedelta(seconds=1)


def _admission_mode(admission: str, interval: Any) -> Literal["strict", "cached"]:
    """The admission mode that honours 0.8.6's ``admission_refresh_interval``.

    0.8.6 re-read the shared state at most once per interval. A positive interval
    maps onto cached admission (CLOSED verdicts reused while LISTEN/NOTIFY keeps them
    honest, i.e. stale for milliseconds, never longer than the interval; without a
    LISTEN connection every call asks the database). Zero, 0.8.6's "read on every
    call", is strict admission, as is None (not given: ``admission`` decides).
    """
    if interval is None:
        return cast(Literal["strict", "cached"], admission)
    interval = as_timedelta(interval, "admission_refresh_interval")
    if interval < timedelta(0):
        raise ValueError(f"`admission_refresh_interval` must be >= 0, got {interval!r}")
    if interval:
        return "cached"
    if admission == "cached":
        raise ValueError(
            "`admission_refresh_interval` of zero asks the store on every call,"
            " which contradicts admission='cached'"
        )
    return "strict"


class ExecutionLog:
    """The outcomes of the breaker's current phase, oldest first (True = success)."""

    __slots__ = ("_outcomes", "size")

    def __init__(self, outcomes: tuple[bool, ...], size: int) -> None:
        self._outcomes = outcomes
        self.size = size

    def __len__(self) -> int:
        return len(self._outcomes)

    def __iter__(self) -> Iterator[bool]:
        return iter(self._outcomes)

    def __repr__(self) -> str:
        return f"<ExecutionLog(size={self.size}): {list(self._outcomes)}>"

    @property
    def is_full(self) -> bool:
        return len(self._outcomes) >= self.size

    @property
    def success_count(self) -> int:
        return sum(self._outcomes)

    @property
    def failure_count(self) -> int:
        return len(self._outcomes) - self.success_count

    @property
    def success_rate(self) -> Fraction:
        return Fraction(self.success_count, len(self)) if self._outcomes else Fraction(0)

    @property
    def failure_rate(self) -> Fraction:
        return Fraction(self.failure_count, len(self)) if self._outcomes else Fraction(0)


def function_key(func: Callable[..., Any]) -> str:
    """The key of an anonymous policy that protects ``func``: its module and qualified
    name, the same in every process that imports it (``app.billing.charge``)."""
    module = getattr(func, "__module__", None) or "__main__"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    if name.endswith("<lambda>"):
        # Lambdas share one name: their line tells them apart.
        code = getattr(func, "__code__", None)
        if code is not None:
            module = _in_cell(module, code.co_filename)
            name = f"{name}:{code.co_firstlineno}"
    return _fit(f"{module}.{name}")


def _site_key(frame: FrameType | None) -> str:
    """The key of an anonymous policy used before it decorates anything: the line that
    built it (``app.billing:12``), as stable as the source code."""
    # Skip the __init__ of subclasses: the site is where the policy was asked for.
    while frame is not None and frame.f_code.co_name == "__init__":
        frame = frame.f_back
    if frame is None:  # pragma: no cover - only from C code
        return "anonymous"
    module = frame.f_globals.get("__name__") or "__main__"
    return _fit(f"{_in_cell(module, frame.f_code.co_filename)}:{frame.f_lineno}")


def _in_cell(module: str, filename: str) -> str:
    """``module``, or for code of a notebook cell, the cell within it.

    A line number is only a place within its cell: IPython compiles every cell as a
    file of its own, named after a hash of the cell's code (``/tmp/ipykernel_<pid>/<hash>.py``,
    formerly ``<ipython-input-<n>-<hash>>``), so two cells' line 3 are told apart by that
    hash, which is the same when the cell runs again, in this kernel or the next.
    """
    if module != "__main__":
        return module
    stem = os.path.splitext(os.path.basename(filename))[0]
    if f"{os.sep}ipykernel_" in filename:
        return f"__main__.cell_{stem}"
    if stem.startswith("<ipython-input-"):
        return f"__main__.cell_{stem[1:-1].rsplit('-', 1)[-1]}"
    return module


def _fit(key: str) -> str:
    # Deeply nested names can exceed the limit: keep them unique and readable.
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{key[: MAX_KEY_LENGTH - 17]}~{digest}"


# Which live policy declared each breaker of each storage object (by id: the policy
# keeps its storage alive), to catch two policies that declare different
# configurations for one breaker: the second would silently replace the first's
# (cooldown, limits) in the shared row.
_declared: dict[tuple[int, str, str], weakref.ref[CircuitProtectorPolicy]] = {}
_declared_lock = threading.RLock()  # weakref callbacks may run inside _declare


def _declare(policy: CircuitProtectorPolicy, key: str) -> None:
    where = (id(policy.storage), policy.namespace, key)
    with _declared_lock:
        ref = _declared.get(where)
        other = ref() if ref is not None else None
        if other is None:

            def forget(dead: weakref.ref[CircuitProtectorPolicy]) -> None:
                with _declared_lock:
                    if _declared.get(where) is dead:
                        del _declared[where]

            _declared[where] = weakref.ref(policy, forget)
            return
    if other is not policy and other.config != policy.config:
        raise ValueError(
            f"breaker {key!r} (namespace {policy.namespace!r}) is already declared in this "
            f"process by {other!r} with {other.config.describe()}; this policy declares "
            f"{policy.config.describe()}: share one policy object, or declare the same "
            "configuration"
        )


class CircuitProtectorPolicy(OptionDrivers, ProtectionPolicy):
    """A circuit breaker, shared by every policy that uses the same storage and key.

    With PostgreSQL configured (``RC_DB_DSN`` or ``RC_DB_*``) the breaker lives in
    the database and is shared by every process; otherwise it lives in memory.
    ``on_storage_error`` chooses what a database outage means: ``"open"`` lets calls
    through, ``"closed"`` rejects them, ``"local"`` runs an in-memory breaker with
    the same configuration until the database answers again.

    In PostgreSQL, ``admission="cached"`` admits CLOSED calls from the last reply
    (kept honest by LISTEN/NOTIFY) instead of asking the database each time, and
    ``recording="batched"`` queues the outcomes of CLOSED calls and flushes them
    together every few milliseconds; half-open trial calls always go to the database.
    0.8.6's ``admission_refresh_interval`` is accepted: positive selects cached
    admission, zero strict.

    Beyond 0.4.5 (each unused by default, and then free): ``window_duration`` judges
    the calls of a time window instead of the last ``window_size``; ``minimum_calls``
    outcomes are needed before a trip; a call longer than ``slow_call_duration`` is
    slow and ``slow_call_limit`` of them trips it; ``cooldown_factor`` multiplies the
    cooldown at each reopening up to ``max_cooldown``. ``handle`` lists the exceptions
    that are failures (others count as successes), ``ignore`` those not counted at all,
    ``failure_if(result)`` flags returned values as failures; ``fallback(exc)`` answers
    a rejection or a counted failure; ``timeout`` cancels an ``async def`` call. The
    policy is also a context manager (``with`` / ``async with``) and has ``call`` and
    ``acall``; ``force(state, hold=True)`` holds it OPEN, ``DISABLED`` turns it off.
    """

    DEFAULT_THRESHOLD = Fraction(1, 1)

    def __init__(
        self,
        *,
        resource_key: str | None = None,
        storage: CircuitBreakerStorage | None = None,
        namespace: str | None = None,
        cooldown: timedelta = timedelta(0),
        failure_limit: Fraction = DEFAULT_THRESHOLD,
        success_limit: Fraction = _NOT_SET,
        should_handle: Callable[[Exception], bool] = handle_all,
        on_status_change: StatusChangeListener | None = None,
        window_size: int | None = None,
        half_open_timeout: timedelta = DEFAULT_HALF_OPEN_TIMEOUT,
        on_storage_error: StorageErrorMode = "open",
        admission: Literal["strict", "cached"] = "strict",
        recording: Literal["immediate", "batched"] = "immediate",
        admission_refresh_interval: timedelta | None = None,
        window_duration: timedelta | None = None,
        minimum_calls: int | None = None,
        slow_call_duration: timedelta | None = None,
        slow_call_limit: Fraction | None = None,
        cooldown_factor: float = 1,
        max_cooldown: timedelta | None = None,
        handle: tuple[type[BaseException], ...] = (Exception,),
        ignore: tuple[type[BaseException], ...] = (),
        failure_if: Callable[[Any], Any] | None = None,
        fallback: Callable[[Exception], Any] | None = None,
        timeout: timedelta | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        admission = _admission_mode(admission, admission_refresh_interval)
        # Checked here as well as by the stores: a policy without resource_key binds its
        # breaker only at its first call, too late for a typo in its configuration.
        if admission not in ("strict", "cached"):
            raise ValueError(f"`admission` must be 'strict' or 'cached', got {admission!r}")
        if recording not in ("immediate", "batched"):
            raise ValueError(f"`recording` must be 'immediate' or 'batched', got {recording!r}")
        if not callable(should_handle):
            raise TypeError("`should_handle` must be callable")
        if on_status_change is not None and not callable(on_status_change):
            raise TypeError("`on_status_change` must be callable or None")
        self.handle = exception_types(handle, "handle")
        self.ignore = exception_types(ignore, "ignore")
        if failure_if is not None and not callable(failure_if):
            raise TypeError("`failure_if` must be callable or None")
        if fallback is not None and not callable(fallback):
            raise TypeError("`fallback` must be callable or None")
        self.failure_if = failure_if
        self.fallback = fallback
        self.timeout = None if timeout is None else to_ns(timeout, "timeout", allow_zero=False)
        if on_storage_error not in ("open", "closed", "local"):
            raise ValueError(
                f"`on_storage_error` must be 'open', 'closed' or 'local', got {on_storage_error!r}"
            )
        if storage is not None and not isinstance(storage, CircuitBreakerStorage):
            raise TypeError(
                f"`storage` must be a CircuitBreakerStorage, got {type(storage).__name__}"
            )
        self._config = Config.build(
            failure_limit=failure_limit,
            window_size=window_size,
            success_limit=None if success_limit is _NOT_SET else success_limit,
            cooldown=cooldown,
            half_open_timeout=half_open_timeout,
            window_duration=window_duration,
            minimum_calls=minimum_calls,
            slow_call_duration=slow_call_duration,
            slow_call_limit=slow_call_limit,
            cooldown_factor=cooldown_factor,
            max_cooldown=max_cooldown,
        )
        # The decorator's own fast drivers serve every policy that uses none of the
        # per-call options; the others go through the general ones.
        self._plain = (
            self.handle == (Exception,)
            and not self.ignore
            and failure_if is None
            and fallback is None
            and self._config.slow_call_duration_ns is None
        )
        self._entered: contextvars.ContextVar[tuple[tuple[Breaker | None, int | None, int], ...]]
        self._entered = contextvars.ContextVar(f"rc_entered_{id(self)}", default=())
        # An anonymous policy is named after the first function it decorates (or, used
        # before that, after the line that built it), so that every process agrees.
        self._named = resource_key is not None
        self.resource_key = check_name(
            resource_key if resource_key is not None else _site_key(sys._getframe(1)),
            "resource_key",
        )
        self.storage = storage if storage is not None else create_storage(namespace)
        self.namespace = check_name(
            namespace if namespace is not None else self.storage.namespace, "namespace"
        )
        # As 0.4.5 kept it, a timedelta, also when given in seconds.
        self.cooldown = as_timedelta(cooldown, "cooldown")
        self.should_handle = should_handle
        self._sync_problem = self._find_sync_problem()
        self.on_storage_error = on_storage_error
        self._on_status_change = on_status_change
        #: This policy's own hooks (the process-wide ones run after them).
        self.hooks = checked_hooks(hooks)
        self._observer: Breaker | None = None  # made on first use by _handle
        self._seen_lock = threading.Lock()
        self._seen_state = CircuitState.CLOSED
        self._seen_generation = -1
        # The last reply of the fast drivers' store already seen (see _see).
        self._seen_reply: Observed | None = None
        self._local: Breaker | None = None
        self._record_error_logged = float("-inf")
        self.admission = admission
        self.admission_refresh_interval = admission_refresh_interval
        self.recording = recording
        self._breaker: Breaker | None = None
        if self._named:
            self._bind(self.resource_key)
        _fork.after_fork_in_child(self, CircuitProtectorPolicy._after_fork)

    def _after_fork(self) -> None:
        # A thread of the parent may have held it at the fork.
        self._seen_lock = threading.Lock()

    def _bind(self, resource_key: str) -> Breaker:
        """Adopt the breaker of ``resource_key`` (no I/O: the first call configures it)."""
        _declare(self, resource_key)
        breaker = self.storage.breaker(
            resource_key,
            self.namespace,
            self._config,
            admission=self.admission,
            recording=self.recording,
            on_storage_error=self.on_storage_error,
        )
        self.resource_key = resource_key
        self._breaker = breaker
        initial = breaker.last_known
        self._seen_reply = None
        if initial is not None:
            self._seen_state, self._seen_generation = initial.state, initial.generation
        return breaker

    def _bound(self) -> Breaker:
        """The breaker, bound now under the construction site's key if still anonymous."""
        breaker = self._breaker
        if breaker is None:
            with _declared_lock:
                breaker = self._breaker or self._bind(self.resource_key)
        return breaker

    def _handle_for(self, func: Callable[..., Any]) -> Breaker:
        """The breaker protecting ``func``: an anonymous policy takes ``func``'s name.

        A policy is one breaker: the functions it decorates share it, under the name
        of the first one.
        """
        breaker = self._breaker
        if breaker is None:
            with _declared_lock:
                breaker = self._breaker or self._bind(function_key(func))
        return breaker

    # -- configuration, read-only -------------------------------------------------

    @property
    def failure_limit(self) -> Fraction:
        return self._config.failure_limit

    @property
    def success_limit(self) -> Fraction:
        """The configured success limit; 1/1 (0.4.5's default) when none was given."""
        s = self._config.success_limit
        return s if s is not None else self.DEFAULT_THRESHOLD

    @property
    def window_size(self) -> int:
        return self._config.window_size

    @property
    def half_open_timeout(self) -> timedelta:
        return timedelta(microseconds=self._config.half_open_timeout_ns // 1000)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def window_duration(self) -> timedelta | None:
        ns = self._config.window_duration_ns
        return None if ns is None else timedelta(microseconds=ns // 1000)

    @property
    def minimum_calls(self) -> int:
        return self._config.minimum_calls

    @property
    def slow_call_duration(self) -> timedelta | None:
        ns = self._config.slow_call_duration_ns
        return None if ns is None else timedelta(microseconds=ns // 1000)

    @property
    def slow_call_limit(self) -> Fraction | None:
        return self._config.slow_call_limit

    @property
    def cooldown_factor(self) -> float:
        return self._config.cooldown_factor

    @property
    def max_cooldown(self) -> timedelta | None:
        ns = self._config.max_cooldown_ns
        return None if ns is None else timedelta(microseconds=ns // 1000)

    # -- state ----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The breaker as the store sees it now (one read)."""
        snap: Snapshot = self._call_store(lambda b: b.snapshot())
        self._observe(snap.state, snap.generation, "read")
        return snap

    @property
    def status(self) -> CircuitState:
        """The breaker's state now, read from the store (the last one seen if it is down)."""
        try:
            return self.snapshot().state
        except StorageError:
            return self._seen_state

    @status.setter
    def status(self, new_status: CircuitState | str) -> None:
        self.force(parse_state(new_status, "status"))

    def force(self, state: CircuitState | str, *, hold: bool = False) -> None:
        """Force a transition for every process sharing the breaker.

        ``hold=True`` keeps it OPEN (no automatic half-open) until the next force or
        reset; DISABLED (every call permitted, nothing trips) is always held.
        """
        target = parse_state(state, "state")
        if not isinstance(hold, bool):
            raise TypeError(f"`hold` must be a bool, got {type(hold).__name__}")
        if hold and target not in (CircuitState.OPEN, CircuitState.DISABLED):
            raise ValueError(f"`hold` applies to OPEN and DISABLED only, not {target.value}")
        reply = self._call_store(lambda b: b.force(target, hold=hold))
        self._observe(reply.state, reply.generation, "admin")

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker for every process sharing it."""
        reply = self._call_store(lambda b: b.reset())
        self._observe(reply.state, reply.generation, "admin")

    @property
    def execution_log(self) -> ExecutionLog:
        """Outcomes of the current phase (the window that tripped it while OPEN)."""
        snap = self.snapshot()
        return ExecutionLog(snap.window, snap.window_capacity)

    def _call_store(self, op: Callable[[Breaker], Any]) -> Any:
        try:
            return op(self._bound())
        except StorageError:
            if self.on_storage_error != "local":
                raise
            return op(self._local_breaker())

    # -- transitions seen ---------------------------------------------------------

    def _observe(
        self, state: CircuitState, generation: int, source: TransitionSource = "call"
    ) -> None:
        if generation != self._seen_generation:
            self._advance(state, generation, source)

    def _advance(
        self, state: CircuitState, generation: int, source: TransitionSource = "call"
    ) -> None:
        # Replies from concurrent calls arrive in any order: only a newer generation
        # moves what this policy has seen, so each transition fires once.
        with self._seen_lock:
            if generation <= self._seen_generation:
                return
            old = self._seen_state
            self._seen_state, self._seen_generation = state, generation
        if old is not state:
            self.on_status_change(old, state)
            _events.transition(self, old, state, generation, source)

    def _see(self, reply: Observed) -> None:
        """A fast driver's reply from the store: a transition if its generation is new.

        Remembered once seen: a store that replies with the same object while nothing
        changes (the in-memory one) then costs the drivers one identity test per call,
        not a NamedTuple field lookup. Skipping a reply already seen is safe since what
        this policy has seen only moves forward."""
        if reply.generation != self._seen_generation:
            self._advance(reply.state, reply.generation)
        self._seen_reply = reply

    def on_status_change(self, current: CircuitState, new: CircuitState) -> None:
        """Called once for each transition this policy makes or observes."""
        if self._on_status_change is not None:
            try:
                result = self._on_status_change(self, current, new)
                if inspect.isawaitable(result):
                    run_listener(result, self.resource_key)
            except Exception:
                # A faulty listener must not turn a transition into a failed call.
                logger.exception("on_status_change listener of %r failed", self.resource_key)

    # -- storage outages ----------------------------------------------------------

    def _local_breaker(self) -> Breaker:
        if self._local is None:
            self._local = InMemoryStorage(namespace=self.namespace).breaker(
                self.resource_key, self.namespace, self._config
            )
        return self._local

    def _degraded_admission(self) -> tuple[Breaker | None, int | None]:
        mode = self.on_storage_error
        if mode == "open":
            _events.during_outage(self, True)
            return None, None
        if mode == "closed":
            _events.during_outage(self, False)
            raise ProtectedCallError(
                "breaker storage unavailable; failing closed",
                resource_key=self.resource_key,
                state=CircuitState.OPEN,
            )
        local = self._local_breaker()
        admission = local.acquire()
        _events.during_outage(self, admission.permitted)
        return local, self._admitted(local, admission)

    def _call_degraded(
        self,
        func: Callable[..., Any],
        args: Any,
        kwargs: Any,
        check: Callable[[Exception], Any] | None,
    ) -> Any:
        """A call of the fast driver while the store cannot answer (``on_storage_error``)."""
        used, generation = self._degraded_admission()
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            verdict = self._fast_verdict(exc, check)
            self._settle(used, generation, decide(used is not None, exc, verdict))
            raise
        except BaseException as exc:
            self._settle(used, generation, decide(used is not None, exc, None))
            raise
        self._settle(used, generation, decide(used is not None, None, True))
        return result

    async def _acall_degraded(
        self,
        func: Callable[..., Awaitable[Any]],
        args: Any,
        kwargs: Any,
        check: Callable[[Exception], Any] | None,
    ) -> Any:
        used, generation = self._degraded_admission()
        try:
            result = await func(*args, **kwargs)
        except Exception as exc:
            verdict = self._fast_verdict(exc, check)
            await self._asettle(used, generation, decide(used is not None, exc, verdict))
            raise
        except BaseException as exc:
            await self._asettle(used, generation, decide(used is not None, exc, None))
            raise
        await self._asettle(used, generation, decide(used is not None, None, True))
        return result

    def _fast_verdict(self, exc: Exception, check: Callable[[Exception], Any] | None) -> bool:
        """Did the call succeed, by the fast driver's predicate (None: every error fails)?"""
        if check is None:
            return False
        try:
            return not check(exc)
        except Exception:
            return not self._predicate_failed()

    def _admitted(self, breaker: Breaker, admission: Admission) -> int:
        if admission.generation != self._seen_generation and breaker is not self._local:
            self._advance(admission.state, admission.generation)
        if not admission.permitted:
            raise self._rejection(admission)
        return admission.generation

    def _rejection(self, admission: Admission) -> ProtectedCallError:
        return ProtectedCallError.rejected(
            self.resource_key, admission.state, admission.retry_after
        )

    def _record_failed(self) -> None:
        # The call itself is over: its result or its exception goes to the caller
        # whatever the store said. The store's error is logged, at most once in a while,
        # since a store that fails this way fails for every call.
        now = time.monotonic()
        if now - self._record_error_logged < _RECORD_ERROR_LOG_INTERVAL:
            return
        self._record_error_logged = now
        logger.error(
            "recording an outcome of %r failed; the call's own result or exception is unaffected",
            self.resource_key,
            exc_info=True,
        )

    def _predicate_failed(self) -> bool:
        # A faulty should_handle must not hide the caller's own exception: log it and
        # count a failure, the safe reading for a breaker.
        logger.exception("should_handle of %r failed; counting a failure", self.resource_key)
        return True

    # The sync and async forms of one step: carry out what ``decide`` asked for.

    def _settle(
        self,
        breaker: Breaker | None,
        generation: int | None,
        settle: Settle,
        duration: int | None = None,
    ) -> None:
        if breaker is None or settle is NOTHING:
            return
        try:
            if settle is RELEASE:
                breaker.release(generation)
                return
            reply = breaker.record(settle is SUCCESS, generation, duration)
        except StorageError:
            return  # the outage is the store's to report; an unreturned permit expires
        except Exception:
            self._store_failed(settle)
            return
        if reply.generation != self._seen_generation and breaker is not self._local:
            self._advance(reply.state, reply.generation)

    async def _asettle(
        self,
        breaker: Breaker | None,
        generation: int | None,
        settle: Settle,
        duration: int | None = None,
    ) -> None:
        if breaker is None or settle is NOTHING:
            return
        try:
            if settle is RELEASE:
                await breaker.arelease(generation)
                return
            reply = await breaker.arecord(settle is SUCCESS, generation, duration)
        except StorageError:
            return
        except Exception:
            self._store_failed(settle)
            return
        if reply.generation != self._seen_generation and breaker is not self._local:
            self._advance(reply.state, reply.generation)

    def _store_failed(self, settle: Settle) -> None:
        # Never instead of what the caller is getting (its result, its own exception,
        # an interruption).
        if settle is RELEASE:
            # The permit expires after half_open_timeout anyway.
            logger.exception("returning the half-open permit of %r failed", self.resource_key)
        else:
            self._record_failed()

    # -- decorators ---------------------------------------------------------------

    def __call__(self, func: F) -> F:
        """Protect ``func`` (sync or ``async def``) with this breaker."""
        self._handle_for(func)  # an anonymous policy takes its key from func now
        if inspect.iscoroutinefunction(func):
            if self._plain and self.timeout is None:
                return cast(F, self._observable(self._wrap_async, func))
            run_async = self._run_async

            @functools.wraps(func)
            async def protected_async(*args: Any, **kwargs: Any) -> Any:
                return await run_async(func, args, kwargs)

            return cast(F, protected_async)
        self._check_sync_options()
        if self._plain:
            return cast(F, self._observable(self._wrap_sync, func))
        run = self._run_sync

        @functools.wraps(func)
        def protected(*args: Any, **kwargs: Any) -> Any:
            return run(func, args, kwargs)

        return cast(F, protected)

    def _observable(self, wrap: Callable[..., Any], func: Callable[..., Any]) -> Any:
        # Observed calls run the same fast driver around a handle that reports them;
        # with no hook installed the plain driver only checks that none is, per call.
        observed = wrap(func, _events.observing(self))
        if self.hooks:
            return observed
        return wrap(func, divert=observed)

    def _handle(self) -> Breaker:
        """The breaker handle for a call of the general drivers: the store's, or, while
        any hook is installed, one that reports the call's events."""
        breaker = self._bound()
        if self.hooks or _events.registry.hooks:
            observer = self._observer
            if observer is None:
                observer = self._observer = _events.observing(self)
            return observer
        return breaker

    # The drivers below are the per-call hot path: admission is read inline and the
    # slow paths (a transition seen, a storage outage, a faulty predicate) are method
    # calls. With the default predicate (every exception is a failure) there is
    # nothing to ask, so it is not called; a rejection is built right here.
    # An admission is an immutable reply, and a store repeats one object while nothing
    # changes (the in-memory store for a whole CLOSED generation): the same object as
    # the last one found permitted under the generation seen needs no field read (a
    # NamedTuple field is a descriptor lookup the interpreter does not specialise).
    # Skipping the checks is exact: that reply is still permitted, and the generation
    # seen only moves forward, so _advance would do nothing with it.

    def _wrap_sync(
        self,
        func: Callable[..., Any],
        via: Breaker | None = None,
        divert: Callable[..., Any] | None = None,
    ) -> Callable[..., Any]:
        policy, breaker = self, self._bound() if via is None else via
        switch = _events.switch(divert)
        should_handle = self.should_handle
        check = None if should_handle is handle_all else should_handle
        rejected = ProtectedCallError.rejected
        # A handle that reports calls to hooks must see every admission and rejection.
        verdicts = breaker if via is None else _UNPUBLISHED
        # The last admission found permitted under the generation seen, and that
        # generation: a cell of this closure (cheaper to read than an attribute), one
        # tuple replaced at once.
        admitted: tuple[Admission | None, int] = (None, -1)

        @functools.wraps(func)
        def protected(*args: Any, **kwargs: Any) -> Any:
            nonlocal admitted
            if switch:
                return divert(*args, **kwargs)  # type: ignore[misc]
            held = verdicts.rejecting
            if held is not None:
                # The store's standing rejection: a clock read and a comparison. A
                # generation this policy has not seen yet goes through acquire, which
                # tells on_status_change.
                # (Indexed, not unpacked: every local costs each call a little.)
                now = held[1]()
                if now < held[0] and held[3] == policy._seen_generation:
                    raise rejected(policy.resource_key, held[2], held[4] - now)
            # The store's standing admission (CLOSED): one slot read, no call. Read after
            # the rejection, which then costs no more than it did without it.
            admission = verdicts.admitting
            if admission is None:
                try:
                    admission = breaker.acquire()
                except StorageError:
                    admission = _OUTAGE  # its generation is never seen: the branch below
            if admission is admitted[0]:
                generation = admitted[1]
            else:
                generation = admission.generation
                if generation != policy._seen_generation:
                    if admission is _OUTAGE:
                        return policy._call_degraded(func, args, kwargs, check)
                    policy._advance(admission.state, generation)
                if not admission.permitted:
                    raise rejected(policy.resource_key, admission.state, admission.retry_after)
                if generation == policy._seen_generation:
                    admitted = (admission, generation)
            try:
                # Without keywords the call passes no dict: `**kwargs` would make a copy
                # of the (empty) one per call.
                result = func(*args, **kwargs) if kwargs else func(*args)
            except Exception:
                # decide()'s rule for an exception with a permit held (record its
                # verdict), inlined: the counted failure is a hot path too.
                # Not bound with "as": the binding and its clean-up cost more than
                # fetching the exception for the rare custom predicate.
                if check is None:
                    success = False
                else:
                    try:
                        success = not check(cast(Exception, sys.exc_info()[1]))
                    except Exception:
                        success = not policy._predicate_failed()
                try:
                    reply = breaker.record(success, generation)
                except StorageError:
                    pass  # the outage is the store's to report; the caller gets its error
                except Exception:
                    policy._record_failed()  # never instead of the caller's own error
                else:
                    if reply is not policy._seen_reply:
                        policy._see(reply)
                raise
            except BaseException:
                policy._settle(breaker, generation, decide(True, sys.exc_info()[1], None))
                raise
            try:
                reply = breaker.record(True, generation)
            except StorageError:
                return result
            except Exception:
                policy._record_failed()
                return result
            if reply is not policy._seen_reply:
                policy._see(reply)
            return result

        return protected

    def _wrap_async(
        self,
        func: Callable[..., Awaitable[Any]],
        via: Breaker | None = None,
        divert: Callable[..., Awaitable[Any]] | None = None,
    ) -> Callable[..., Awaitable[Any]]:
        policy, breaker = self, self._bound() if via is None else via
        switch = _events.switch(divert)
        should_handle = self.should_handle
        check = None if should_handle is handle_all else should_handle
        rejected = ProtectedCallError.rejected
        # A handle that reports calls to hooks must see every admission and rejection.
        verdicts = breaker if via is None else _UNPUBLISHED
        # The last admission found permitted under the generation seen, and that
        # generation: a cell of this closure (cheaper to read than an attribute), one
        # tuple replaced at once.
        admitted: tuple[Admission | None, int] = (None, -1)

        @functools.wraps(func)
        async def protected(*args: Any, **kwargs: Any) -> Any:
            nonlocal admitted
            if switch:
                return await divert(*args, **kwargs)  # type: ignore[misc]
            held = verdicts.rejecting
            if held is not None:
                # The store's standing rejection: a clock read and a comparison. A
                # generation this policy has not seen yet goes through acquire, which
                # tells on_status_change.
                # (Indexed, not unpacked: every local costs each call a little.)
                now = held[1]()
                if now < held[0] and held[3] == policy._seen_generation:
                    raise rejected(policy.resource_key, held[2], held[4] - now)
            # The store's standing admission (CLOSED): one slot read, no call. Read after
            # the rejection, which then costs no more than it did without it.
            admission = verdicts.admitting
            if admission is None:
                try:
                    admission = await breaker.aacquire()
                except StorageError:
                    admission = _OUTAGE  # its generation is never seen: the branch below
            if admission is admitted[0]:
                generation = admitted[1]
            else:
                generation = admission.generation
                if generation != policy._seen_generation:
                    if admission is _OUTAGE:
                        return await policy._acall_degraded(func, args, kwargs, check)
                    policy._advance(admission.state, generation)
                if not admission.permitted:
                    raise rejected(policy.resource_key, admission.state, admission.retry_after)
                if generation == policy._seen_generation:
                    admitted = (admission, generation)
            try:
                result = await (func(*args, **kwargs) if kwargs else func(*args))
            except Exception:
                # decide()'s rule for an exception, inlined as in the sync driver.
                if check is None:
                    success = False
                else:
                    try:
                        success = not check(cast(Exception, sys.exc_info()[1]))
                    except Exception:
                        success = not policy._predicate_failed()
                # Awaited here rather than through _asettle: one coroutine less per call.
                try:
                    reply = await breaker.arecord(success, generation)
                except StorageError:
                    pass  # the outage is the store's to report; the caller gets its error
                except Exception:
                    policy._record_failed()  # never instead of the caller's own error
                else:
                    if reply is not policy._seen_reply:
                        policy._see(reply)
                raise
            except BaseException:
                await policy._asettle(breaker, generation, decide(True, sys.exc_info()[1], None))
                raise
            try:
                reply = await breaker.arecord(True, generation)
            except StorageError:
                return result
            except Exception:
                policy._record_failed()
                return result
            if reply is not policy._seen_reply:
                policy._see(reply)
            return result

        return protected

    def __repr__(self) -> str:
        return (
            f"CircuitProtectorPolicy(resource_key={self.resource_key!r}, "
            f"namespace={self.namespace!r}, failure_limit={self.failure_limit}, "
            f"cooldown={self.cooldown!r})"
        )
