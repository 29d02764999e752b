"""What a storage is: a factory of breaker handles, plus 0.4.5's admin API."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

from resilient_circuit._machine import MAX_WINDOW, Admission, CircuitState, Config, parse_state

__all__ = (
    "Breaker",
    "CircuitBreakerStorage",
    "Observed",
    "Snapshot",
    "StorageClosed",
    "StorageError",
    "StorageErrorMode",
    "Verdict",
)

MAX_KEY_LENGTH = 255

#: What a policy does with a call while its store cannot answer.
StorageErrorMode = Literal["open", "closed", "local"]


#: A rejection a breaker holds: (until, clock, state, generation, retry_until, token).
#: Every call before ``until`` on ``clock`` (monotonic ns) is rejected in ``state`` and
#: ``generation``, with ``retry_until - now`` to wait; ``token`` is the store's own.
Verdict = tuple[int, Callable[[], int], CircuitState, int, int, object]


class StorageError(Exception):
    """The store could not answer (database down, pool exhausted, timeout, read-only)."""


class StorageClosed(StorageError):
    """The store was closed by ``close()``/``aclose()``: it never connects again.

    Not an outage (nothing is down, no outage is logged or reported to hooks): the
    policies handle the call per ``on_storage_error`` as they would during one, and
    the store says once that it was closed (see ``PostgresStorage.close``).
    """


class Observed(Protocol):
    """The state and generation a store reported after an operation.

    Never changed once returned: a store may return the same object again while its
    state and generation stay as they were (a policy then skips reading them)."""

    @property
    def state(self) -> CircuitState: ...

    @property
    def generation(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A breaker as one read saw it."""

    state: CircuitState
    generation: int
    window: tuple[bool, ...]  # oldest first; True is a success
    window_capacity: int
    failure_count: int
    open_remaining: timedelta | None  # time left in OPEN's cooldown
    permits: int
    successes: int
    failures: int


class Breaker(abc.ABC):
    """One breaker in one store, bound once by a policy and then called per call.

    ``acquire``/``record`` may raise StorageError; the policy decides what an outage
    means. The ``a``-prefixed variants are for event loops, so that async code never
    blocks its loop: a store doing I/O awaits it, the memory store answers at once.
    """

    __slots__ = ()

    #: The rejection this breaker holds, while it holds one: a store that publishes its
    #: verdicts lets the decorator reject with a clock read and a comparison, without
    #: calling ``acquire``. The breaker withdraws it (None) as its state changes; a
    #: call that reads it while a change is under way is one made before that change.
    rejecting: Verdict | None = None
    #: The admission every call gets while it holds one (a CLOSED breaker's): a store
    #: that publishes it spares the decorator calling ``acquire`` at all. Withdrawn
    #: (None) or replaced as the state changes, under the same rule as ``rejecting``.
    admitting: Admission | None = None

    @property
    @abc.abstractmethod
    def last_known(self) -> Observed | None:
        """The state and generation last heard from the store, if any yet."""

    @abc.abstractmethod
    def acquire(self) -> Admission: ...

    @abc.abstractmethod
    def record(
        self, success: bool, generation: int | None, duration: int | None = None
    ) -> Observed:
        """Record one outcome; ``duration`` (nanoseconds the call took) is sent only when
        slow calls are configured."""

    @abc.abstractmethod
    def release(self, generation: int | None) -> Observed:
        """A call whose outcome is not counted ended: return the trial permit it held."""

    @abc.abstractmethod
    def force(self, state: CircuitState, *, hold: bool = False) -> Observed: ...

    @abc.abstractmethod
    def reset(self) -> Observed: ...

    @abc.abstractmethod
    def snapshot(self) -> Snapshot: ...

    @abc.abstractmethod
    def aacquire(self) -> Awaitable[Admission]: ...

    @abc.abstractmethod
    def arecord(
        self, success: bool, generation: int | None, duration: int | None = None
    ) -> Awaitable[Observed]: ...

    @abc.abstractmethod
    def arelease(self, generation: int | None) -> Awaitable[Observed]: ...

    @abc.abstractmethod
    def aforce(self, state: CircuitState, *, hold: bool = False) -> Awaitable[Observed]: ...

    @abc.abstractmethod
    def areset(self) -> Awaitable[Observed]: ...

    @abc.abstractmethod
    def asnapshot(self) -> Awaitable[Snapshot]: ...


def check_name(value: object, name: str) -> str:
    """Keys and namespaces: non-empty strings of at most 255 characters."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"`{name}` must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"`{name}` must be at most {MAX_KEY_LENGTH} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"`{name}` must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: a str, but no text that PostgreSQL (or a log) can hold.
            raise ValueError(
                f"`{name}` must be valid Unicode text, got a lone surrogate in {value!r}"
            ) from None
    return value


def check_key_and_namespace(
    resource_key: object, namespace: object, default_namespace: str
) -> tuple[str, str]:
    """An entry point's key and namespace (None: ``default_namespace``), checked alike."""
    key = check_name(resource_key, "resource_key")
    ns = check_name(default_namespace if namespace is None else namespace, "namespace")
    return key, ns


class CircuitBreakerStorage(abc.ABC):
    """Where breakers live. Policies sharing a storage object and a key share a breaker."""

    namespace: str
    #: Which kind of store this is (0.8.6): ``"in-memory"`` (this process only) or
    #: ``"postgres"`` (shared by every process using the database).
    backend_name: str = "unknown"

    @abc.abstractmethod
    def breaker(
        self,
        resource_key: str,
        namespace: str,
        config: Config,
        *,
        admission: Literal["strict", "cached"] = "strict",
        recording: Literal["immediate", "batched"] = "immediate",
        on_storage_error: StorageErrorMode = "open",
    ) -> Breaker:
        """The handle of one breaker, adopting ``config`` as its configuration.

        ``admission`` and ``recording`` choose how a remote store trades round trips
        for freshness; a store in this process's memory is always exact and free.
        ``on_storage_error`` is what the policy does while the store cannot answer
        (a remote store says so when it reports an outage). No I/O.
        """

    @abc.abstractmethod
    def get_state(self, resource_key: str) -> dict[str, Any] | None:
        """0.4.5's admin read: state, failure_count, open_until (epoch seconds or 0),
        execution_log; None when the breaker does not exist."""

    @abc.abstractmethod
    def set_state(
        self,
        resource_key: str,
        state: str,
        failure_count: int,
        open_until: float,
        execution_log: list[bool] | None = None,
    ) -> None:
        """0.4.5's admin write: overwrite a breaker's state (a new generation begins)."""

    def delete_state(self, resource_key: str) -> bool:
        """0.8.6's admin delete: forget a breaker; True if it existed.

        A store that cannot forget answers False (0.8.6's default for other stores).
        """
        return False


@dataclass(frozen=True, slots=True)
class AdminState:
    """The arguments of 0.4.5's ``set_state``, validated."""

    state: CircuitState
    failure_count: int
    open_until: float  # epoch seconds; 0 for none
    window: tuple[bool, ...]  # oldest first; True is a success


# Well below int4's maximum: each failure adds one, and PostgreSQL stores it as an int4.
_MAX_FAILURE_COUNT = 1_000_000_000
_MAX_EPOCH = 32503680000  # 3000-01-01


def check_admin_state(
    resource_key: object,
    state: object,
    failure_count: object,
    open_until: object,
    execution_log: object,
) -> AdminState:
    """Validate ``set_state``'s arguments the same way for every storage."""
    check_name(resource_key, "resource_key")
    target = parse_state(state)
    if isinstance(failure_count, bool) or not isinstance(failure_count, int):
        raise TypeError("`failure_count` must be an int")
    if not 0 <= failure_count <= _MAX_FAILURE_COUNT:
        raise ValueError(
            f"`failure_count` must be in [0, {_MAX_FAILURE_COUNT}], got {failure_count}"
        )
    if isinstance(open_until, bool) or not isinstance(open_until, int | float):
        raise TypeError("`open_until` must be epoch seconds (0 for none)")
    if not -_MAX_EPOCH <= open_until <= _MAX_EPOCH:  # also refuses NaN
        raise ValueError(f"`open_until` must be epoch seconds before year 3000, got {open_until}")
    if execution_log is None:
        window: tuple[bool, ...] = ()
    elif not isinstance(execution_log, list | tuple) or not all(
        isinstance(x, bool) for x in execution_log
    ):
        raise TypeError("`execution_log` must be a list of booleans (True = success)")
    elif len(execution_log) > MAX_WINDOW:
        raise ValueError(f"`execution_log` must hold at most {MAX_WINDOW} outcomes")
    else:
        window = tuple(execution_log)
    return AdminState(target, failure_count, float(open_until), window)
