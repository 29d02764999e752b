"""One breaker row as seen from this process: the round trips, and the verdicts it may skip.

While OPEN a breaker remembers the remaining cooldown the server reported and
rejects locally until then. With ``cached`` admission a CLOSED breaker admits from
the last reply while the store's LISTEN connection is up; with ``batched``
recording the outcomes of calls admitted while CLOSED are queued and flushed
together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal, Protocol

from resilient_circuit._machine import Admission, CircuitState, Config
from resilient_circuit.storage.base import Breaker, Snapshot, StorageError
from resilient_circuit.storage.postgres import queries
from resilient_circuit.storage.postgres.batch import OutcomeQueue, split
from resilient_circuit.storage.postgres.notify import Transition
from resilient_circuit.storage.postgres.queries import Reply, Statements

__all__ = ("AdmissionMode", "BreakerHost", "PgBreaker", "RecordingMode")

AdmissionMode = Literal["strict", "cached"]
RecordingMode = Literal["immediate", "batched"]

# How long an OPEN verdict is trusted while no LISTEN connection can revoke it.
UNHEARD_OPEN_HOLD_NS = 1_000_000_000


class BreakerHost(Protocol):
    """What a breaker needs of its store: round trips, LISTEN, and the flusher."""

    @property
    def statements(self) -> Statements: ...

    def fetch(
        self, breaker: PgBreaker | None, statement: Any, params: Any, *, missing_ok: bool = False
    ) -> Any: ...

    async def afetch(
        self, breaker: PgBreaker | None, statement: Any, params: Any, *, missing_ok: bool = False
    ) -> Any: ...

    def listen(self) -> None: ...

    def listening(self) -> bool: ...

    def start_flusher(self) -> None: ...


class PgBreaker(Breaker):
    """One breaker row, as seen from this process."""

    __slots__ = (
        "_admit_closed",
        "_cached",
        "_configured",
        "_flushing",
        "_host",
        "_key_params",
        "_last",
        "_open_deadline",
        "_open_until",
        "_queue",
        "_trusted",
        "config",
        "namespace",
        "resource_key",
    )

    def __init__(
        self,
        host: BreakerHost,
        resource_key: str,
        namespace: str,
        config: Config,
    ) -> None:
        self._host = host
        self.resource_key = resource_key
        self.namespace = namespace
        self.config = config
        self._key_params = {"key": resource_key, "namespace": namespace}
        self._configured = False
        self._last: Reply | None = None
        self._open_deadline = 0  # monotonic ns; 0 = no cached OPEN verdict
        self._open_until = 0  # monotonic ns: the end of the cooldown the server reported
        self._admit_closed = Admission(True, CircuitState.CLOSED, -1, None)
        self._trusted = False  # may the last reply admit without asking the server?
        self._cached = False
        self._queue: OutcomeQueue | None = None
        # Held while a batch is on its way, so flush() returns only once it has landed.
        self._flushing = threading.Lock()

    # -- what the store calls -------------------------------------------------------

    def set_modes(self, admission: AdmissionMode, recording: RecordingMode) -> None:
        if admission not in ("strict", "cached"):
            raise ValueError(f"`admission` must be 'strict' or 'cached', got {admission!r}")
        if recording not in ("immediate", "batched"):
            raise ValueError(f"`recording` must be 'immediate' or 'batched', got {recording!r}")
        self._cached = admission == "cached"
        if recording == "batched" and self._queue is None:
            self._queue = OutcomeQueue()
        if self._cached:
            self._host.listen()
        if self._queue is not None:
            self._host.start_flusher()

    def reconfigure(self, config: Config) -> None:
        """Adopt ``config``; it is stored in the row on the next contact."""
        self.config = config
        self._configured = False

    def pending_configuration(self) -> dict[str, Any] | None:
        """The parameters of ``rc_configure`` while the row may not hold ``config`` yet."""
        if self._configured:
            return None
        return queries.configure_params(self.resource_key, self.namespace, self.config)

    def configured(self, row: tuple[Any, ...]) -> None:
        """``rc_configure`` answered ``row``: the row holds ``config``."""
        self._configured = True
        self._heard(queries.reply(row))

    def invalidate(self, *, keep_open: bool = False) -> None:
        """Forget cached verdicts: the next call asks the server.

        ``keep_open`` keeps a held OPEN verdict: right when listening first starts,
        every held one was taken unheard and so is already capped at a second.
        """
        if not keep_open:
            self._open_deadline = 0
        self._trusted = False

    def announced(self, event: Transition) -> None:
        """A transition of this breaker committed somewhere in the fleet."""
        last = self._last
        if last is None or event.generation > last.generation:
            self._last = Reply(event.new, event.generation)
            self._open_deadline = 0

    @property
    def last_known(self) -> Reply | None:
        return self._last

    @property
    def queued(self) -> int:
        """Outcomes waiting for the next flush."""
        return len(self._queue) if self._queue is not None else 0

    # -- replies ----------------------------------------------------------------------

    def _heard(self, reply: Reply) -> Reply:
        # Replies and announcements race; a reply never undoes a newer announcement.
        last = self._last
        if last is None or reply.generation >= last.generation:
            self._last = reply
        self._trusted = True
        return reply

    def _local_verdict(self) -> Admission | None:
        deadline = self._open_deadline
        if deadline:
            now = time.monotonic_ns()
            if now < deadline:
                last = self._last
                generation = last.generation if last is not None else 0
                return Admission(False, CircuitState.OPEN, generation, self._open_until - now)
            self._open_deadline = 0
        if self._cached and self._trusted and self._host.listening():
            last = self._last
            if last is not None and last.state is CircuitState.CLOSED:
                admission = self._admit_closed
                if admission.generation != last.generation:
                    admission = self._admit_closed = Admission(
                        True, CircuitState.CLOSED, last.generation, None
                    )
                return admission
        return None

    def _admitted(self, row: tuple[Any, ...]) -> Admission:
        adm = queries.admission(row)
        self._heard(Reply(adm.state, adm.generation))
        if adm.state is CircuitState.OPEN and adm.retry_after:
            # A remaining duration, on our monotonic clock: never an absolute server time.
            # It is held for the whole cooldown only while NOTIFY can end it early (a
            # peer forcing CLOSED, a reset); unheard, for a second at most.
            hold = adm.retry_after
            if not self._host.listening():
                self._host.listen()
                hold = min(hold, UNHEARD_OPEN_HOLD_NS)
            now = time.monotonic_ns()
            self._open_until = now + adm.retry_after
            self._open_deadline = now + hold
            last = self._last
            if last is not None and last.generation > adm.generation:
                self._open_deadline = 0  # a newer transition was announced meanwhile
        return adm

    def _recorded(self, row: tuple[Any, ...]) -> Reply:
        return self._heard(queries.reply(row))

    def _queued(self, success: bool, generation: int | None) -> Reply | None:
        """Queue the outcome if it belongs to a CLOSED phase; half-open trials go at once."""
        queue, last = self._queue, self._last
        if (
            queue is not None
            and last is not None
            and last.state is CircuitState.CLOSED
            and generation == last.generation
        ):
            queue.put(success, generation)
            return last
        return None

    def _record_params(self, success: bool, generation: int | None) -> dict[str, Any]:
        return {
            "key": self.resource_key,
            "success": success,
            "namespace": self.namespace,
            "generation": generation,
        }

    def _force_params(self, state: CircuitState) -> dict[str, Any]:
        return {"key": self.resource_key, "state": state.value, "namespace": self.namespace}

    # -- the call path ------------------------------------------------------------------

    def acquire(self) -> Admission:
        host = self._host
        return self._local_verdict() or self._admitted(
            host.fetch(self, host.statements.acquire, self._key_params)
        )

    async def aacquire(self) -> Admission:
        host = self._host
        return self._local_verdict() or self._admitted(
            await host.afetch(self, host.statements.acquire, self._key_params)
        )

    def record(self, success: bool, generation: int | None) -> Reply:
        host = self._host
        return self._queued(success, generation) or self._recorded(
            host.fetch(self, host.statements.record, self._record_params(success, generation))
        )

    async def arecord(self, success: bool, generation: int | None) -> Reply:
        host = self._host
        return self._queued(success, generation) or self._recorded(
            await host.afetch(
                self, host.statements.record, self._record_params(success, generation)
            )
        )

    # -- batches ------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the queued outcomes in one ``rc_record_many`` (kept if the database is down)."""
        queue = self._queue
        if queue is None:
            return
        with self._flushing:
            if len(queue):
                batch = queue.take()
                try:
                    row = self._host.fetch(
                        self, self._host.statements.record_many, self._batch_params(batch)
                    )
                except StorageError:
                    queue.give_back(batch)
                    return
                self._flushed(row)

    async def aflush(self) -> None:
        """The coroutine twin of ``flush``: waits for a batch in flight without blocking."""
        queue = self._queue
        if queue is None:
            return
        # A thread's lock, so it cannot be awaited: poll while the flusher thread sends.
        while True:
            if self._flushing.acquire(blocking=False):
                break
            await asyncio.sleep(0.001)
        try:
            if len(queue):
                batch = queue.take()
                try:
                    row = await self._host.afetch(
                        self, self._host.statements.record_many, self._batch_params(batch)
                    )
                except StorageError:
                    queue.give_back(batch)
                    return
                self._flushed(row)
        finally:
            self._flushing.release()

    def _batch_params(self, batch: list[tuple[bool, int | None]]) -> dict[str, Any]:
        successes, generations = split(batch)
        return {
            "key": self.resource_key,
            "namespace": self.namespace,
            "successes": successes,
            "generations": generations,
        }

    def _flushed(self, row: tuple[Any, ...]) -> None:
        if self._recorded(row).state is not CircuitState.CLOSED:
            self._trusted = False

    # -- admin ----------------------------------------------------------------------------

    def force(self, state: CircuitState) -> Reply:
        self.invalidate()
        host = self._host
        return self._recorded(host.fetch(self, host.statements.force, self._force_params(state)))

    async def aforce(self, state: CircuitState) -> Reply:
        self.invalidate()
        host = self._host
        return self._recorded(
            await host.afetch(self, host.statements.force, self._force_params(state))
        )

    def reset(self) -> Reply:
        self.invalidate()
        host = self._host
        return self._recorded(host.fetch(self, host.statements.reset, self._key_params))

    async def areset(self) -> Reply:
        self.invalidate()
        host = self._host
        return self._recorded(await host.afetch(self, host.statements.reset, self._key_params))

    def snapshot(self) -> Snapshot:
        self.flush()
        host = self._host
        row = host.fetch(self, host.statements.status, self._key_params, missing_ok=True)
        return self._read(row)

    async def asnapshot(self) -> Snapshot:
        await self.aflush()
        host = self._host
        row = await host.afetch(self, host.statements.status, self._key_params, missing_ok=True)
        return self._read(row)

    def _read(self, row: tuple[Any, ...] | None) -> Snapshot:
        snap = queries.snapshot(row, self.config)
        self._heard(Reply(snap.state, snap.generation))
        return snap
