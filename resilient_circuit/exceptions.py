"""Exceptions raised by the policies (the user's own exceptions pass through unchanged)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resilient_circuit._machine import CircuitState

__all__ = (
    "ProtectedCallError",
    "ProtectionException",
    "RetryLimitReached",
    "SchemaNotReady",
    "StorageAccessDenied",
    "StorageNotUsable",
)


class ProtectionException(Exception):
    """Base class of every exception a policy raises itself."""


class ProtectedCallError(ProtectionException):
    """The breaker rejected the call; the protected function did not run.

    ``retry_after`` says when the breaker may admit a call again (None when unknown),
    measured on the clock of the store that decided: the database server's in
    PostgreSQL mode.
    """

    # Slots: a rejection is built per rejected call, and slots spare it an instance
    # dictionary (BaseException's own stays available for other attributes).
    __slots__ = ("resource_key", "retry_after_ns", "state")

    resource_key: str | None
    state: CircuitState | None
    retry_after_ns: int | None

    def __init__(
        self,
        message: str | None = None,
        *,
        resource_key: str | None = None,
        state: CircuitState | None = None,
        retry_after_ns: int | None = None,
    ) -> None:
        super().__init__(*(() if message is None else (message,)))
        self.resource_key = resource_key
        self.state = state
        self.retry_after_ns = retry_after_ns

    @classmethod
    def rejected(
        cls, resource_key: str, state: CircuitState, retry_after_ns: int | None
    ) -> ProtectedCallError:
        """The breaker's own rejection. Rejecting is a hot path, so this skips
        ``__init__``; the message and the timedelta are built only when read."""
        exc = _new_exception(cls)
        exc.resource_key = resource_key
        exc.state = state
        exc.retry_after_ns = retry_after_ns
        return exc

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.args, self.resource_key, self.state, self.retry_after_ns),
        )

    @property
    def retry_after(self) -> timedelta | None:
        """How long until the breaker may admit a call, or None when unknown."""
        ns = self.retry_after_ns
        return None if ns is None else timedelta(microseconds=ns // 1000)

    def __repr__(self) -> str:
        message = f"{self.args[0]!r}, " if self.args else ""
        state = self.state.name if self.state is not None else None
        return (
            f"{type(self).__name__}({message}resource_key={self.resource_key!r}, "
            f"state={state!r}, retry_after={self.retry_after!r})"
        )

    def __str__(self) -> str:
        if self.args:
            return str(self.args[0])
        state = self.state.name if self.state is not None else "OPEN"
        text = f"circuit {self.resource_key!r} is {state}; the call was not made"
        if self.retry_after_ns is not None:
            text += f" (retry after {self.retry_after_ns / 1e9:.3f}s)"
        return text


# BaseException's own __new__, looked up once rather than through the class per call.
_new_exception = BaseException.__new__


def _rebuild(
    cls: type[ProtectedCallError],
    args: tuple[Any, ...],
    resource_key: str | None,
    state: CircuitState | None,
    retry_after_ns: int | None,
) -> ProtectedCallError:
    return cls(*args[:1], resource_key=resource_key, state=state, retry_after_ns=retry_after_ns)


class RetryLimitReached(ProtectionException):
    """Every attempt failed; the last error is chained as ``__cause__``."""


class StorageNotUsable(ProtectionException):
    """The breaker store answers but cannot be used as configured; an operator must act.

    Raised as such when the database does not exist (the server refused the connection
    for it); its subclasses name the other cases.
    Unlike an outage (which the policies ride out per ``on_storage_error``), this is
    raised to the caller before the protected function runs, on every call, until
    it is fixed: a deployment mistake should be loud, not a silently missing breaker.
    """


class SchemaNotReady(StorageNotUsable):
    """The breaker functions are not installed (or are older than this library) in the
    database: run ``resilient-circuit-cli pg-setup``."""


class StorageAccessDenied(StorageNotUsable):
    """The database role may not use the breaker functions or this namespace (grant it
    with ``resilient-circuit-cli pg-setup --app-role ROLE``), or the server refused its
    login: no such role, not permitted to log in, password refused."""
