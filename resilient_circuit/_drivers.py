"""The breaker's per-call options beyond the decorator's fast path.

``handle``/``ignore``/``failure_if`` (which outcomes count), ``fallback``, ``timeout``,
slow-call timing, the ``with``/``async with`` forms and ``call``/``acall``, with async
predicates and hooks for async functions. ``CircuitProtectorPolicy`` inherits these
drivers; it keeps its own fast drivers for policies that use none of the options.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from resilient_circuit._machine import Admission, Config
from resilient_circuit._settle import Settle, decide
from resilient_circuit.exceptions import ProtectedCallError
from resilient_circuit.storage.base import Breaker, StorageError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ("OptionDrivers",)

logger = logging.getLogger("resilient_circuit.circuit_breaker")

Entered = tuple[Breaker | None, int | None, int]


def handle_all(exc: Exception) -> bool:
    """The default ``should_handle``: every exception is a failure."""
    return True


def exception_types(value: object, name: str) -> tuple[type[BaseException], ...]:
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise TypeError(f"`{name}` must be a tuple of exception classes")
    return value


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


class OptionDrivers:
    """The general drivers; the attributes below are the policy's."""

    _breaker: Breaker | None  # None until an anonymous policy knows its key
    _config: Config
    _entered: contextvars.ContextVar[tuple[Entered, ...]]
    resource_key: str
    handle: tuple[type[BaseException], ...]
    ignore: tuple[type[BaseException], ...]
    should_handle: Callable[[Exception], Any]
    failure_if: Callable[[Any], Any] | None
    fallback: Callable[[Exception], Any] | None
    timeout: int | None
    # Why a sync function cannot be protected with these options (None: it can); the
    # policy sets it once built, as a plain attribute like every other it reads per call.
    _sync_problem: str | None

    if TYPE_CHECKING:

        def _degraded_admission(self) -> tuple[Breaker | None, int | None]: ...

        def _handle(self) -> Breaker: ...

        def _admitted(self, breaker: Breaker, admission: Admission) -> int: ...

        def _predicate_failed(self) -> bool: ...

        def _settle(
            self,
            breaker: Breaker | None,
            generation: int | None,
            settle: Settle,
            duration: int | None = None,
        ) -> None: ...

        async def _asettle(
            self,
            breaker: Breaker | None,
            generation: int | None,
            settle: Settle,
            duration: int | None = None,
        ) -> None: ...

    def _check_sync_options(self) -> None:
        problem = self._sync_problem
        if problem is not None:
            raise TypeError(problem)

    def _find_sync_problem(self) -> str | None:
        """Why a sync function cannot be protected with these options, if it cannot."""
        if self.timeout is not None:
            return (
                "`timeout` applies to async def functions; for sync functions use "
                "`slow_call_duration`"
            )
        for name in ("should_handle", "failure_if", "fallback"):
            if _is_async(getattr(self, name)):
                return f"`{name}` is async: it needs an async def protected function"
        return None

    # -- the general drivers: every per-call option ---------------------------------

    def call(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` through this breaker (sync functions)."""
        self._check_sync_options()
        return self._run_sync(func, args, kwargs)

    async def acall(self, func: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        """``await func(*args, **kwargs)`` through this breaker."""
        return await self._run_async(func, args, kwargs)

    def _admit(self) -> tuple[Breaker | None, int | None]:
        """Admission through the store (or its outage mode); raises ProtectedCallError."""
        breaker = self._handle()  # the store's, or one reporting to hooks
        try:
            admission = breaker.acquire()
        except StorageError:
            return self._degraded_admission()
        return breaker, self._admitted(breaker, admission)

    async def _aadmit(self) -> tuple[Breaker | None, int | None]:
        breaker = self._handle()  # the store's, or one reporting to hooks
        try:
            admission = await breaker.aacquire()
        except StorageError:
            return self._degraded_admission()
        return breaker, self._admitted(breaker, admission)

    def _verdict(self, exc: Exception) -> bool | None:
        """An exception's outcome: True counts a success, False a failure, None nothing."""
        if self.ignore and isinstance(exc, self.ignore):
            return None
        if not isinstance(exc, self.handle):
            return True
        check = self.should_handle
        if check is handle_all:
            return False
        try:
            return not check(exc)
        except Exception:
            return not self._predicate_failed()

    async def _averdict(self, exc: Exception) -> bool | None:
        if self.ignore and isinstance(exc, self.ignore):
            return None
        if not isinstance(exc, self.handle):
            return True
        check = self.should_handle
        if check is handle_all:
            return False
        try:
            handled = check(exc)
            if inspect.isawaitable(handled):
                handled = await handled
            return not handled
        except Exception:
            return not self._predicate_failed()

    def _result_failed(self, result: Any) -> bool:
        try:
            return bool(self.failure_if(result))  # type: ignore[misc]
        except Exception:
            logger.exception("failure_if of %r failed; counting a failure", self.resource_key)
            return True

    async def _aresult_failed(self, result: Any) -> bool:
        try:
            failed = self.failure_if(result)  # type: ignore[misc]
            if inspect.isawaitable(failed):
                failed = await failed
            return bool(failed)
        except Exception:
            logger.exception("failure_if of %r failed; counting a failure", self.resource_key)
            return True

    def _clock_start(self) -> int:
        return time.monotonic_ns() if self._config.slow_call_duration_ns is not None else 0

    def _took(self, started: int) -> int | None:
        return time.monotonic_ns() - started if started else None

    def _run_sync(self, func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        fallback = self.fallback
        try:
            used, generation = self._admit()
        except ProtectedCallError as rejected:
            if fallback is None:
                raise
            return fallback(rejected)
        started = self._clock_start()
        try:
            result = func(*args, **kwargs) if kwargs else func(*args)
        except Exception as exc:
            duration = self._took(started)
            verdict = self._verdict(exc)
            self._settle(used, generation, decide(used is not None, exc, verdict), duration)
            if verdict is not False or fallback is None:
                raise
            return fallback(exc)
        except BaseException as exc:
            self._settle(used, generation, decide(used is not None, exc, None))
            raise
        duration = self._took(started)
        verdict = self.failure_if is None or not self._result_failed(result)
        self._settle(used, generation, decide(used is not None, None, verdict), duration)
        return result

    async def _run_async(self, func: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        fallback = self.fallback
        try:
            used, generation = await self._aadmit()
        except ProtectedCallError as rejected:
            if fallback is None:
                raise
            return await _maybe_await(fallback(rejected))
        started = self._clock_start()
        try:
            call = func(*args, **kwargs) if kwargs else func(*args)
            if self.timeout is None:
                result = await call
            else:
                result = await _within(call, self.timeout)
        except Exception as exc:
            duration = self._took(started)
            verdict = await self._averdict(exc)
            await self._asettle(used, generation, decide(used is not None, exc, verdict), duration)
            if verdict is not False or fallback is None:
                raise
            return await _maybe_await(fallback(exc))
        except BaseException as exc:
            await self._asettle(used, generation, decide(used is not None, exc, None))
            raise
        duration = self._took(started)
        verdict = self.failure_if is None or not await self._aresult_failed(result)
        await self._asettle(used, generation, decide(used is not None, None, verdict), duration)
        return result

    # -- with policy: / async with policy: ------------------------------------------

    def __enter__(self) -> Self:
        used, generation = self._admit()
        self._entered.set((*self._entered.get(), (used, generation, self._clock_start())))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        used, generation, started = self._leave()
        duration = self._took(started)
        verdict = self._verdict(exc) if isinstance(exc, Exception) else True
        self._settle(used, generation, decide(used is not None, exc, verdict), duration)

    async def __aenter__(self) -> Self:
        used, generation = await self._aadmit()
        self._entered.set((*self._entered.get(), (used, generation, self._clock_start())))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        used, generation, started = self._leave()
        duration = self._took(started)
        verdict = await self._averdict(exc) if isinstance(exc, Exception) else True
        await self._asettle(used, generation, decide(used is not None, exc, verdict), duration)

    def _leave(self) -> tuple[Breaker | None, int | None, int]:
        entered = self._entered.get()
        if not entered:
            raise RuntimeError("the policy's with block was left without being entered")
        self._entered.set(entered[:-1])
        return entered[-1]


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _within(call: Awaitable[Any], timeout_ns: int) -> Any:
    """``await call``, cancelled after ``timeout_ns``: then TimeoutError (the call's own
    exceptions, a TimeoutError of its own included, pass through unchanged)."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout_ns / 1e9)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        # Waited for, not awaited: how the cancelled call ended is not the caller's
        # concern, a cancellation of the caller still is.
        await asyncio.wait((task,))
        raise TimeoutError(f"the call did not finish within {timeout_ns / 1e9:g}s")
    return task.result()


_listener_tasks: set[asyncio.Task[Any]] = set()


def run_listener(awaitable: Awaitable[Any], resource_key: str) -> None:
    """Run an async on_status_change: as a task of the running loop, else to completion."""

    async def guarded() -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("on_status_change listener of %r failed", resource_key)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(guarded())
        return
    task = loop.create_task(guarded())
    _listener_tasks.add(task)
    task.add_done_callback(_listener_tasks.discard)
