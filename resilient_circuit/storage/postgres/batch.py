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

logger = logging.getLogger("resilient_circuit.storage")

# Beyond this many unflushed outcomes per breaker (a long outage), the oldest go.
MAX_QUEUED = 100_000


class OutcomeQueue:
    """One breaker's unflushed outcomes. ``deque`` appends and pops are atomic, so the
    call path takes no lock."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[tuple[bool, int | None]] = deque()

    def put(self, success: bool, generation: int | None) -> None:
        self._items.append((success, generation))

    def take(self) -> list[tuple[bool, int | None]]:
        items = self._items
        return [items.popleft() for _ in range(len(items))]

    def give_back(self, batch: list[tuple[bool, int | None]]) -> None:
        """Requeue a batch that could not be flushed, ahead of newer outcomes."""
        self._items.extendleft(reversed(batch))
        excess = len(self._items) - MAX_QUEUED
        if excess > 0:
            for _ in range(excess):
                self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


class Flusher:
    """A daemon thread that flushes every ``interval`` seconds, and once more at exit."""

    def __init__(self, interval: float, flush: Callable[[], None]) -> None:
        self.interval = interval
        self._flush = flush
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
            self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self._flush()
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
        self._flush_quietly()


def split(batch: Iterable[tuple[bool, int | None]]) -> tuple[list[bool], list[int | None]]:
    successes: list[bool] = []
    generations: list[int | None] = []
    for success, generation in batch:
        successes.append(success)
        generations.append(generation)
    return successes, generations
