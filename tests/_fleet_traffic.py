"""Steady traffic through one policy from threads and tasks, with what every call saw.

The outage tests run this while they break the database, then check each call: it
returned, raised the function's own exception (the very object), or, where the
policy says so, was rejected with ProtectedCallError; and how long it waited.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from resilient_circuit import CircuitProtectorPolicy, ProtectedCallError
from resilient_circuit.storage import PostgresStorage


class OwnError(Exception):
    """The protected function's own failure, numbered by call."""

    def __init__(self, number: int) -> None:
        super().__init__(f"call {number} failed on its own")
        self.number = number


@dataclass(frozen=True)
class Seen:
    """One call as its caller saw it (``at`` is wall-clock time, like log records)."""

    at: float
    waited: float
    outcome: str  # "ok", "own", "rejected"


@dataclass
class Traffic:
    """Calls ``policy`` from ``threads`` threads and ``tasks`` coroutines until stopped.

    Every ``fail_every``-th call raises its own ``OwnError``; the function itself does
    no I/O, so a call's duration is the time the breaker made it wait.
    """

    policy: CircuitProtectorPolicy
    threads: int = 3
    tasks: int = 0
    fail_every: int = 4
    pause: float = 0.005
    seen: list[Seen] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._numbers = itertools.count()
        self._raised: dict[int, OwnError] = {}
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

        @self.policy
        def sync_call(number: int) -> int:
            return self._body(number)

        @self.policy
        async def async_call(number: int) -> int:
            return self._body(number)

        self._sync_call = sync_call
        self._async_call = async_call

    def _body(self, number: int) -> int:
        self.ran.append(number)
        if number % self.fail_every == 0:
            error = self._raised[number] = OwnError(number)
            raise error
        return number

    def _judge(self, number: int, at: float, started: float, exc: BaseException | None) -> None:
        waited = time.monotonic() - started
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, OwnError) and exc is self._raised.get(number):
            outcome = "own"
        elif isinstance(exc, ProtectedCallError):
            outcome = "rejected"
        else:
            self.unexpected.append(exc)
            outcome = "unexpected"
        self.seen.append(Seen(at, waited, outcome))

    def call_once(self) -> None:
        number = next(self._numbers)
        at, started = time.time(), time.monotonic()
        try:
            assert self._sync_call(number) == number
        except BaseException as exc:  # judged, never lost
            self._judge(number, at, started, exc)
        else:
            self._judge(number, at, started, None)

    async def acall_once(self) -> None:
        number = next(self._numbers)
        at, started = time.time(), time.monotonic()
        try:
            assert await self._async_call(number) == number
        except BaseException as exc:  # judged, never lost
            self._judge(number, at, started, exc)
        else:
            self._judge(number, at, started, None)

    def _thread(self) -> None:
        while not self._stop.is_set():
            self.call_once()
            time.sleep(self.pause)

    async def _tasks(self) -> None:
        async def loop() -> None:
            while not self._stop.is_set():
                await self.acall_once()
                await asyncio.sleep(self.pause)

        try:
            await asyncio.gather(*(loop() for _ in range(self.tasks)))
        finally:
            storage = self.policy.storage
            if isinstance(storage, PostgresStorage):
                await storage.aclose()

    def start(self) -> Traffic:
        for _ in range(self.threads):
            self._workers.append(threading.Thread(target=self._thread, daemon=True))
        if self.tasks:
            self._workers.append(
                threading.Thread(target=asyncio.run, args=(self._tasks(),), daemon=True)
            )
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        assert not any(worker.is_alive() for worker in self._workers)

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- what happened -------------------------------------------------------------

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        counts: dict[str, int] = {}
        for each in self.seen:
            if since <= each.at < until:
                counts[each.outcome] = counts.get(each.outcome, 0) + 1
        return counts

    def longest_wait(self) -> float:
        return max((each.waited for each in self.seen), default=0.0)


def _time_waiting_for_a_cpu() -> float:
    """Seconds this thread spent runnable but not running (Linux schedstat), else 0."""
    try:
        with open("/proc/thread-self/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


# A stall of the event loop that no busy machine explains: a blocking connect or
# statement costs at least the store's connect timeout (2 s by default) once the
# database stops answering. Ordinary lateness is for benchmarks to measure.
LOOP_STALL = 0.5


def blocking_pool_uses(store: PostgresStorage) -> list[str]:
    """Record every use of the store's blocking pool from inside a running event loop.

    Coroutines must only ever await the async pool: a use of the blocking one from
    the loop's thread stalls every task of the loop for a round trip, or for a
    connect timeout when the database is down. Install it after the set-up that
    may legitimately use the blocking pool (constructing policies configures them).
    """
    uses: list[str] = []
    blocking_pool = store.pool

    def pool() -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            uses.append(f"{threading.current_thread().name}: {loop!r}")
        return blocking_pool()

    store.pool = pool
    return uses


@asynccontextmanager
async def loop_lag(period: float = 0.005) -> AsyncIterator[Callable[[], float]]:
    """A ticker sleeping ``period`` at a time; yields a reader of its worst lateness.

    Lateness is how much later than asked the ticker woke up, less the time the OS
    kept this thread waiting for a CPU meanwhile (on a busy machine the database's
    backends compete for the same cores): what remains is time the event loop spent
    running other callbacks or blocked in a call, which is what must stay short.
    The objects alive on entry (the test runner's, every imported module's) are
    frozen out of the cyclic collector meanwhile, so that a full collection's pause
    scales with what the code under test allocates, not with the runner's heap.
    """
    worst = 0.0
    done = asyncio.Event()
    gc.collect()
    gc.freeze()

    async def tick() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before, queued = loop.time(), _time_waiting_for_a_cpu()
            await asyncio.sleep(period)
            late = loop.time() - before - period - (_time_waiting_for_a_cpu() - queued)
            worst = max(worst, late)

    task = asyncio.create_task(tick())
    try:
        yield lambda: worst
    finally:
        done.set()
        await task
        gc.unfreeze()
