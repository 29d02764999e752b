"""Batched recording: outcomes queued in memory, flushed with one ``rc_record_many``.

For keys so hot that a transaction per call is the cost to avoid. Outcomes are
applied in order exactly as single records would be; trial calls of a half-open
phase never wait in a queue (the policy records them at once).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from itertools import groupby, repeat, starmap

logger = logging.getLogger("resilient_circuit.storage")

# Beyond this many unflushed outcomes per breaker, the call (a thread's or a coroutine's)
# flushes them itself while the database answers; once a flush has failed (a long outage),
# the oldest go instead: logged and counted, never silently.
MAX_QUEUED = 100_000

# Outcomes per rc_record_many statement at most, whatever is queued: the function costs
# a few microseconds per outcome, so a statement of this size takes tens of
# milliseconds, well within any sensible statement_timeout. A statement that times out
# anyway halves the size for that breaker's next attempt.
MAX_BATCH = 10_000

# Outcomes rc_record_runs takes in one call at most (it refuses more, SQLSTATE 22023).
MAX_RUN_TOTAL = 1_000_000_000

# (success, generation, duration in nanoseconds when slow calls are measured)
Outcome = tuple[bool, "int | None", "int | None"]


class OutcomeQueue:
    """One breaker's unflushed outcomes. ``deque`` appends and pops are atomic, so the
    call path takes no lock; only shedding (rare) does.

    The breaker's call path appends to ``items`` itself (one frame less per call), the
    same preallocated outcome tuple for every success of a generation, or through ``put``;
    past ``limit`` it flushes before calling ``shed()``.
    """

    __slots__ = ("_shed_lock", "dropped", "items", "limit", "reported")

    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self.items: deque[Outcome] = deque()
        self.limit = limit
        self.dropped = 0  # outcomes shed so far
        self.reported = 0  # of which a log line has told
        self._shed_lock = threading.Lock()

    def put(self, success: bool, generation: int | None, duration: int | None = None) -> None:
        self.items.append((success, generation, duration))

    def take(self, most: int) -> list[Outcome]:
        """The oldest ``most`` outcomes at most, removed from the queue; all of them when
        they are one outcome repeated (a healthy breaker's successes), which the server
        applies in one UPDATE however many they are.

        Counted and popped in C (``count`` compares the one shared tuple by identity), so
        the flusher keeps up with a thread queueing an outcome a microsecond while they
        share the GIL. Appends only ever land on the right, and the shed lock keeps
        ``shed`` from popping on the left meanwhile, so the outcomes counted are the ones
        popped.
        """
        items = self.items
        with self._shed_lock:
            queued = len(items)
            if queued > most and (queued > MAX_RUN_TOTAL or items.count(items[0]) != queued):
                queued = most
            return list(starmap(items.popleft, repeat((), queued)))

    def give_back(self, batch: list[Outcome]) -> None:
        """Requeue a batch that could not be flushed, ahead of newer outcomes."""
        self.items.extendleft(reversed(batch))
        self.shed()

    def shed(self) -> None:
        """Drop the oldest outcomes beyond ``limit``, counting them."""
        with self._shed_lock:
            items = self.items
            excess = len(items) - self.limit
            for _ in range(max(excess, 0)):
                try:
                    items.popleft()
                except IndexError:  # taken by a flush meanwhile
                    break
                self.dropped += 1

    def unreported(self) -> int:
        """Outcomes shed since the last call (which a log line must now tell)."""
        with self._shed_lock:
            new, self.reported = self.dropped - self.reported, self.dropped
        return new

    def __len__(self) -> int:
        return len(self.items)


class Flusher:
    """A daemon thread that flushes every ``interval`` seconds; ``last_flush`` runs once
    when it stops (``close()`` or the process exiting)."""

    def __init__(
        self, interval: float, flush: Callable[[], None], last_flush: Callable[[], None]
    ) -> None:
        self.interval = interval
        self._flush = flush
        self._last_flush = last_flush
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # A weak reference, so the exit hook does not keep a closed store alive.
        ref = weakref.WeakMethod(self.stop)
        atexit.register(lambda: (stop := ref()) and stop())

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="resilient_circuit-flusher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped.is_set():
                break  # stop() makes the last flush itself (the store refuses others then)
            self._flush_quietly()

    def _flush_quietly(self, flush: Callable[[], None] | None = None) -> None:
        try:
            (flush or self._flush)()
        except Exception:  # pragma: no cover - a bug, not an outage
            logger.exception("flushing batched outcomes failed")

    def stop(self) -> None:
        """Flush what is queued and stop the thread (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(10)
        self._flush_quietly(self._last_flush)


def split(
    batch: Iterable[Outcome],
) -> tuple[list[bool], list[int | None], list[int | None] | None]:
    """The batch as rc_record_many's arrays; durations are None when no outcome has one."""
    successes: list[bool] = []
    generations: list[int | None] = []
    durations: list[int | None] = []
    for success, generation, duration in batch:
        successes.append(success)
        generations.append(generation)
        durations.append(duration)
    return successes, generations, durations if any(d is not None for d in durations) else None


def runs(batch: list[Outcome]) -> tuple[str, str, str] | None:
    """The batch as rc_record_runs's ``counts``, ``successes`` and ``generations`` literals.

    One element per run of identical outcomes: a healthy breaker's batch is a single run
    whatever its length, which the server applies in one UPDATE. Literals rather than
    lists, since psycopg adapts a list element by element in Python (about a
    microsecond per element). None when an outcome carries a duration (slow calls are
    measured): those go to rc_record_many as lists (``split``).
    """
    counts: list[int] = []
    successes: list[str] = []
    generations: list[str] = []
    if batch and batch.count(batch[0]) == len(batch):  # one run: counted in C
        success, generation, duration = batch[0]
        if duration is not None:
            return None
        return (
            f"{{{len(batch)}}}",
            "{t}" if success else "{f}",
            "{NULL}" if generation is None else f"{{{generation}}}",
        )
    for (success, generation, duration), run in groupby(batch):
        if duration is not None:
            return None
        counts.append(len(list(run)))
        successes.append("t" if success else "f")
        generations.append("NULL" if generation is None else str(generation))
    return (
        "{" + ",".join(map(str, counts)) + "}",
        "{" + ",".join(successes) + "}",
        "{" + ",".join(generations) + "}",
    )
