"""The events a policy or a store reports, and the hooks that receive them.

A hook is any callable taking one event. Hooks are installed for the whole process
(``add_hook``, ``remove_hook``, ``set_hooks``) or for one policy (``hooks=[...]``);
with none installed, a protected call does nothing more than read one attribute.
Hooks run in the thread (or event loop) of the call that caused the event, after the
fact, so they must be quick; a hook that raises is logged once and skipped, never
turning the call into a failure.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, Union

from resilient_circuit._machine import CircuitState

__all__ = (
    "CallDuringOutage",
    "CallFailed",
    "CallIgnored",
    "CallRejected",
    "CallSlow",
    "CallSucceeded",
    "Event",
    "Hook",
    "RetryGaveUp",
    "RetryScheduled",
    "StateChanged",
    "StorageAvailable",
    "StorageOutageEnded",
    "StorageOutageStarted",
    "add_hook",
    "emit",
    "get_hooks",
    "remove_hook",
    "set_hooks",
)

logger = logging.getLogger("resilient_circuit.instrumentation")


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """A protected call was recorded as a success (``state``: the breaker's after it).

    An exception that ``should_handle`` declines is recorded as a success too; it
    still reaches the caller.
    """

    namespace: str
    key: str
    duration: float  # seconds, from admission to the outcome's record
    state: CircuitState


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A protected call was recorded as a failure, ``exception`` being what it raised."""

    namespace: str
    key: str
    duration: float
    state: CircuitState
    exception: BaseException | None


@dataclass(frozen=True, slots=True)
class CallRejected:
    """The breaker refused a call; ``retry_after`` is the wait it gave, in seconds."""

    namespace: str
    key: str
    state: CircuitState
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class CallIgnored:
    """A call raised an exception the policy ignores: not recorded at all."""

    namespace: str
    key: str
    duration: float
    exception: BaseException | None


@dataclass(frozen=True, slots=True)
class CallSlow:
    """A recorded call took longer than the policy's slow-call duration (both in seconds)."""

    namespace: str
    key: str
    duration: float
    threshold: float


@dataclass(frozen=True, slots=True)
class CallDuringOutage:
    """The breaker store could not answer a call's admission, so the policy's
    ``on_storage_error`` (``mode``: open, closed or local) decided: ``permitted`` says
    whether the call went ahead (always when open, never when closed, as the
    in-process breaker said when local). Its outcome is not recorded in the store."""

    namespace: str
    key: str
    mode: str
    permitted: bool


#: Where a policy learned of a transition: the reply to a protected call (its own
#: transition or a peer's, seen on this call), its own ``status =``/``reset()``
#: ("admin"), or a read of the breaker (``status``, ``snapshot()``).
TransitionSource = Literal["call", "admin", "read"]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A policy saw its breaker move from ``old`` to ``new`` (made here or by a peer)."""

    namespace: str
    key: str
    old: CircuitState
    new: CircuitState
    generation: int
    source: TransitionSource


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """A retry policy will call ``function`` again after ``delay`` seconds.

    ``attempt`` is the attempt that failed (1 for the first call); ``exception`` is
    what it raised, None when ``retry_if_result`` refused its result.
    """

    function: str
    attempt: int
    delay: float
    exception: BaseException | None


@dataclass(frozen=True, slots=True)
class RetryGaveUp:
    """A retry policy stopped retrying ``function`` after ``attempts`` attempts."""

    function: str
    attempts: int
    reason: str  # attempts, duration, retry_after, rejected, budget
    exception: BaseException | None


@dataclass(frozen=True, slots=True)
class StorageAvailable:
    """The breaker store ``store`` answered for the first time (it is up until a
    ``StorageOutageStarted``)."""

    store: str


@dataclass(frozen=True, slots=True)
class StorageOutageStarted:
    """The breaker store ``store`` (its address, never a password) stopped answering."""

    store: str
    error: str


@dataclass(frozen=True, slots=True)
class StorageOutageEnded:
    """The breaker store ``store`` answers again, after ``downtime`` seconds."""

    store: str
    downtime: float


Event = Union[  # noqa: UP007 - a runtime alias, also read by Python 3.10
    CallSucceeded,
    CallFailed,
    CallRejected,
    CallIgnored,
    CallSlow,
    CallDuringOutage,
    StateChanged,
    RetryScheduled,
    RetryGaveUp,
    StorageAvailable,
    StorageOutageStarted,
    StorageOutageEnded,
]


class Hook(Protocol):
    """Receives every event; must be quick and must not block."""

    def __call__(self, event: Event) -> object: ...


class _Registry:
    """The process-wide hooks, as an immutable tuple swapped whole (no lock to read)."""

    __slots__ = ("hooks",)

    def __init__(self) -> None:
        self.hooks: tuple[Hook, ...] = ()


registry = _Registry()
#: What the decorators read on every call: the same hooks as ``registry.hooks``, as a
#: list updated in place, so that "none installed" costs one truth test of a closure
#: variable (no attribute lookup).
installed: list[Hook] = []
_lock = threading.Lock()
_reported: set[int] = set()  # ids of hooks whose failure has been logged


def _checked(hook: object, name: str = "hook") -> Hook:
    if not callable(hook):
        raise TypeError(f"`{name}` must be callable, got {type(hook).__name__}")
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004
    ):
        # Hooks run inside the call, sync or async alike: a coroutine would never run.
        raise TypeError(f"`{name}` must be a plain function, not async def")
    return hook


def checked_hooks(hooks: Iterable[Hook] | None, name: str = "hooks") -> tuple[Hook, ...]:
    """``hooks`` as a tuple, each callable, else TypeError naming ``name``."""
    if hooks is None:
        return ()
    if callable(hooks) or isinstance(hooks, str | bytes):
        raise TypeError(f"`{name}` must be an iterable of callables, not a single object")
    result = tuple(hooks)
    for hook in result:
        _checked(hook, name)
    return result


def add_hook(hook: Hook) -> None:
    """Install ``hook`` for every policy and store of this process (once)."""
    _checked(hook)
    with _lock:
        if hook not in registry.hooks:
            registry.hooks = (*registry.hooks, hook)
            installed[:] = registry.hooks


def remove_hook(hook: Hook) -> None:
    """Uninstall ``hook``; ValueError if it was not installed."""
    with _lock:
        if hook not in registry.hooks:
            raise ValueError("`hook` is not installed")
        registry.hooks = tuple(h for h in registry.hooks if h != hook)
        installed[:] = registry.hooks


def set_hooks(hooks: Iterable[Hook] | None) -> None:
    """Replace the process-wide hooks (None or ``[]``: none, the zero-cost state)."""
    new = checked_hooks(hooks)
    with _lock:
        registry.hooks = new
        installed[:] = new


def get_hooks() -> tuple[Hook, ...]:
    """The process-wide hooks, in the order they run."""
    return registry.hooks


def emit(event: Event, local: tuple[Hook, ...] = ()) -> None:
    """Deliver ``event`` to ``local`` (a policy's own hooks), then to the global ones."""
    for hook in (*local, *registry.hooks) if local else registry.hooks:
        try:
            hook(event)
        except Exception:
            _report(hook)


def _report(hook: Hook) -> None:
    # One line per faulty hook, not one per event: a hook that fails, fails every time.
    key = id(hook)
    if key in _reported:
        return
    _reported.add(key)
    logger.exception(
        "resilient_circuit hook %r raised; it is skipped for this event (logged once)", hook
    )
