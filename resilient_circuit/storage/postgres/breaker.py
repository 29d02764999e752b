"""One breaker row as seen from this process: the round trips, and the verdicts it may skip.

While OPEN a breaker remembers the remaining cooldown the server reported and
rejects locally until then. A verdict taken before the store's LISTEN connection is
up is held for a second at most, until the listener, once listening, reads it again
and extends it to the cooldown (or drops it, if the row changed meanwhile). The verdict
held is published as ``rejecting``, which the decorator reads instead of calling
``acquire``; whatever drops or replaces it withdraws that first. With
``cached`` admission a CLOSED breaker admits from the last reply while the store's
LISTEN connection is up; with ``batched`` recording the outcomes of calls admitted
while CLOSED are queued and flushed together.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Literal, Protocol, cast

from resilient_circuit._machine import Admission, CircuitState, Config
from resilient_circuit.exceptions import StorageNotUsable
from resilient_circuit.storage.base import Breaker, Snapshot, StorageError, Verdict
from resilient_circuit.storage.postgres import queries
from resilient_circuit.storage.postgres.batch import (
    MAX_BATCH,
    MAX_RUN_TOTAL,
    Outcome,
    OutcomeQueue,
    runs,
    split,
)
from resilient_circuit.storage.postgres.notify import Transition
from resilient_circuit.storage.postgres.queries import Reply, Statements

__all__ = ("AdmissionMode", "BreakerHost", "PgBreaker", "RecordingMode")

logger = logging.getLogger("resilient_circuit.storage")

AdmissionMode = Literal["strict", "cached"]
RecordingMode = Literal["immediate", "batched"]

# How long an OPEN verdict is trusted while no LISTEN connection can revoke it.
UNHEARD_OPEN_HOLD_NS = 1_000_000_000

# A batch statement that timed out is retried with half as many outcomes, down to this.
_MIN_BATCH = 100
# At most one log line per breaker this often about outcomes shed (and one at close).
_SHED_LOG_INTERVAL = 10.0

# What a breaker's prepared outcomes are while it queues nothing: their generation is an
# object no caller's generation (an int, or None) equals, so every call takes the general
# path.
_UNQUEUED = cast(Outcome, (True, object(), None))


class BreakerHost(Protocol):
    """What a breaker needs of its store: round trips, LISTEN, and the flusher."""

    @property
    def statements(self) -> Statements: ...

    @property
    def max_queued(self) -> int: ...

    def fetch(
        self,
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
        *,
        missing_ok: bool = False,
        force: bool = False,
    ) -> Any: ...

    async def afetch(
        self,
        breaker: PgBreaker | None,
        statement: Any,
        params: Any,
        *,
        missing_ok: bool = False,
        force: bool = False,
    ) -> Any: ...

    def listen(self) -> None: ...

    def listening(self, namespace: str | None = None) -> bool: ...

    def listening_flag(self, namespace: str) -> threading.Event | None: ...

    def start_flusher(self) -> None: ...


class PgBreaker(Breaker):
    """One breaker row, as seen from this process."""

    __slots__ = (
        "_admit_closed",
        "_batch_size",
        "_cached",
        "_closed",
        "_config_epoch",
        "_configured",
        "_epoch",
        "_failed",
        "_fast",
        "_flusher_started",
        "_flushing",
        "_host",
        "_key_params",
        "_last",
        "_last_flush_failed",
        "_listen_requested",
        "_open_deadline",
        "_open_generation",
        "_open_unheard",
        "_open_until",
        "_queue",
        "_restoring",
        "_shed_logged_at",
        "_succeeded",
        "_trusted",
        "_warned_config",
        "admitting",
        "config",
        "namespace",
        "rejecting",
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
        # Whether the next rc_configure only restores (p_restore): after an announcement or
        # a reply saying the row was made anew, which never replaces a stored configuration.
        self._restoring = False
        self._admit_closed = Admission(True, CircuitState.CLOSED, -1, None)
        self._cached = False
        self._closed = False  # the store was closed: nothing cached nor queued any more
        self._queue: OutcomeQueue | None = None
        # The call path's shortcuts, kept by _rearm() from the state below, each read
        # with one attribute load so that another thread replacing it is never half
        # seen: the cached CLOSED verdict with the LISTEN connection's flag that must be
        # up to use it, and the outcomes to queue for a success and for a failure of
        # the current CLOSED generation (each names its generation).
        self._fast: tuple[Admission, threading.Event] | None = None
        self._succeeded = self._failed = _UNQUEUED
        # The (stored, declared) configurations last warned about.
        self._warned_config: tuple[str, str] | None = None
        self.start_afresh()

    def start_afresh(self) -> None:
        """Forget every verdict and queued outcome (a new breaker, or a forked child's).

        A child must not replay its parent's queued outcomes (the parent sends them)
        nor trust verdicts its parent's LISTEN connection vouched for.
        """
        # The held OPEN verdict as the decorator reads it (see Breaker.rejecting):
        # published with _open_deadline, withdrawn wherever that is dropped.
        self.rejecting: Verdict | None = None
        # Never published here (see Breaker.admitting): a cached admission holds only
        # while the LISTEN connection does, which acquire checks per call. A slot, so
        # that the decorator's read of it stays a slot read.
        self.admitting: Admission | None = None
        self._fast = None
        self._succeeded = self._failed = _UNQUEUED
        self._last: Reply | None = None
        self._open_deadline = 0  # monotonic ns; 0 = no cached OPEN verdict
        self._open_until = 0  # monotonic ns: the end of the cooldown the server reported
        # Was the held OPEN verdict taken while no LISTEN connection could revoke it?
        self._open_unheard = False
        self._open_generation = -1  # the generation of the held OPEN verdict
        self._trusted = False  # may the last reply admit without asking the server?
        # Bumped by every invalidation: a reply to a request sent before one is not trusted.
        self._epoch = 0
        self._config_epoch = 0  # the epoch when rc_configure was last sent
        self._listen_requested = False
        self._flusher_started = False
        if self._queue is not None:
            self._queue = OutcomeQueue(self._host.max_queued)
        # Held while a batch is on its way, so flush() returns only once it has landed.
        self._flushing = threading.Lock()
        self._last_flush_failed = False
        self._batch_size = MAX_BATCH
        self._shed_logged_at = float("-inf")

    # -- what the store calls -------------------------------------------------------

    def set_modes(self, admission: AdmissionMode, recording: RecordingMode) -> None:
        if admission not in ("strict", "cached"):
            raise ValueError(f"`admission` must be 'strict' or 'cached', got {admission!r}")
        if recording not in ("immediate", "batched"):
            raise ValueError(f"`recording` must be 'immediate' or 'batched', got {recording!r}")
        # No connection and no thread yet: the first call that needs them starts them.
        self._cached = admission == "cached"
        if recording == "batched" and self._queue is None:
            self._queue = OutcomeQueue(self._host.max_queued)
        self._rearm()

    def reconfigure(self, config: Config) -> None:
        """Adopt ``config``; it is stored in the row on the next contact."""
        self.config = config
        self._configured = False
        self._restoring = False

    @property
    def is_configured(self) -> bool:
        """Has this process stored ``config`` in the row yet?"""
        return self._configured

    def pending_configuration(self) -> dict[str, Any] | None:
        """The parameters of ``rc_configure`` while the row may not hold ``config`` yet."""
        if self._configured:
            return None
        self._config_epoch = self._epoch
        params = queries.configure_params(self.resource_key, self.namespace, self.config)
        params["restore"] = self._restoring
        return params

    def configured(self, row: tuple[Any, ...], stored: tuple[Any, ...] | None = None) -> None:
        """``rc_configure`` answered ``row``: the row holds ``config``.

        ``stored`` is what the row held before (None when it did not exist): another
        process declaring another configuration for the same key is worth one WARNING,
        since each process that starts replaces the other's.
        """
        restored = self._restoring
        self._configured = True
        self._restoring = False
        self._heard(queries.reply(row), self._config_epoch)
        if restored:
            # A restore replaces no stored configuration (the server keeps one it finds):
            # nothing to say, whoever announced that the row was forgotten.
            return
        differing = [] if stored is None else queries.differing_fields(stored, self.config)
        if not differing:
            return
        assert stored is not None
        told = (queries.describe_stored(stored), self.config.describe())
        if told == self._warned_config:
            # Said already: the same difference declared again (reconfigured, forgotten).
            return
        self._warned_config = told
        logger.warning(
            "breaker %r (namespace %r): the stored configuration differs from this "
            "process's in %s (stored: %s; this process: %s); this process's replaces it "
            "(the last declaration wins)",
            self.resource_key,
            self.namespace,
            ", ".join(differing),
            *told,
        )

    def invalidate(self, *, keep_open: bool = False) -> None:
        """Forget cached verdicts: the next call asks the server.

        ``keep_open`` keeps a held OPEN verdict: when listening (re)starts, every held
        one was taken unheard (losing the connection dropped the others), so it is
        capped at a second until ``reheard`` extends it.
        """
        # The epoch first: a verdict being published meanwhile sees it and withdraws
        # itself (see _publish_open), or is published before the line below drops it.
        self._epoch += 1
        if not keep_open:
            self.rejecting = None
            self._open_deadline = 0
        self._trusted = False
        self._fast = None

    def close(self) -> None:
        """The store was closed: from now on every call asks it (and it refuses).

        No verdict admits or rejects from memory and no outcome is queued, since no
        connection will ever check a verdict or flush a queue again; the store then
        handles each call as closed (see ``PostgresStorage.close``). Kept by a forked
        child, as the store's own flag is.
        """
        self._closed = True
        self.invalidate()
        self._rearm()

    def held_unheard(self) -> tuple[int, int] | None:
        """The epoch and generation of an OPEN verdict held unheard, to read it again."""
        if not (self._open_deadline and self._open_unheard):
            return None
        return self._epoch, self._open_generation

    def reheard(self, remaining: int | None, epoch: int, generation: int, now: int) -> None:
        """The row, read again once LISTEN is up, is OPEN for ``remaining`` ns more (None: not).

        LISTEN was established before that read, so from then on every change to the
        row is announced: the verdict may be held for the whole cooldown, as if taken
        while listening. A row that changed in between (a peer forced CLOSED, a reset)
        drops it instead. ``epoch`` is when it was picked: anything that invalidated
        the breaker since then wins.
        """
        if epoch != self._epoch:
            return
        if remaining is None:
            self.invalidate()
            return
        self._open_until = self._open_deadline = now + remaining
        self._open_generation = generation
        self._open_unheard = False
        self._fast = None  # a held OPEN verdict comes before any cached CLOSED one
        if epoch != self._epoch:
            self._open_deadline = 0  # invalidated while this was being written
            self.rejecting = None
            return
        self._publish_open(epoch)

    def announced(self, event: Transition) -> None:
        """A transition of this breaker was announced: drop what this process cached.

        Any role that can connect can send a notification, so its payload is never
        taken for the breaker's state: the next call asks the database, and state,
        generation and ``on_status_change`` follow from that reply alone.
        """
        if event.generation == 0:
            # Generation 0 is a breaker forgotten (or never used): if it was forgotten,
            # its row went with the configuration, so restore ours on next use. Any role
            # can forge this: a restore stores nothing into a row holding a configuration,
            # so a forgery costs one round trip and changes nothing. (Before this process
            # first stored it, its declaration stays one: the last declaration wins.)
            self._restoring = self._restoring or self._configured
            self._configured = False
        else:
            last = self._last
            if last is not None and (last.state, last.generation) == (event.new, event.generation):
                # The transition into the very state and generation a reply already
                # told (most often this process's own trip or force, announced after
                # its reply): nothing new to ask about. Ignoring it is safe even if
                # forged, since any later transition has a newer generation (or 0, a
                # forgotten row) and still drops what was cached.
                return
        self.invalidate()

    @property
    def cached(self) -> bool:
        """Whether this breaker admits CLOSED calls from cached verdicts."""
        return self._cached

    @property
    def last_known(self) -> Reply | None:
        return self._last

    @property
    def queued(self) -> int:
        """Outcomes waiting for the next flush."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def dropped(self) -> int:
        """Outcomes shed because more than ``max_queued`` were waiting."""
        return self._queue.dropped if self._queue is not None else 0

    # -- replies ----------------------------------------------------------------------

    def _heard(self, reply: Reply, epoch: int) -> Reply:
        # Concurrent replies arrive in any order: the newest generation wins. Only the
        # database's replies are believed; a reply to a request sent before the last
        # invalidation may predate the transition announced since, so it is not trusted
        # to admit calls on its own.
        last = self._last
        if last is None or reply.generation >= last.generation:
            self._last = reply
        elif reply.generation == 0:
            # Generations only grow while a row lives: back at 0, the row was deleted
            # (rc_forget, rc_gc) and made anew, with the default configuration. Follow
            # it, and store ours again. (A late reply from before the first transition
            # looks the same; the next reply puts the newer generation back.)
            self._last = reply
            self._restoring = self._restoring or self._configured
            self._configured = False
        else:
            # Older than what is known: a late reply, or a row deleted without a word
            # (rc_gc) and made anew by a peer, whose generations started over past 0.
            # Which one cannot be told, so the generation known is kept but not
            # trusted: admitting from it could let calls through a row that is OPEN,
            # and outcomes of its generation would count for nothing.
            self._trusted = False
            self._rearm()
            return reply
        self._trusted = epoch == self._epoch
        held = self.rejecting
        if held is not None and (self._last is None or held[3] != self._last.generation):
            # acquire would now answer another generation: let it.
            self.rejecting = None
        self._rearm()
        return reply

    def _publish_open(self, epoch: int) -> None:
        """Publish the held OPEN verdict as ``rejecting``: what ``_local_verdict`` answers.

        Only while the newest reply is of the verdict's generation (``_local_verdict``
        names the newest's). Withdrawn again at once if an invalidation or a newer
        reply came meanwhile: those withdraw after changing what this reads.
        """
        last = self._last
        generation = self._open_generation
        if last is None or last.generation != generation:
            self.rejecting = None
            return
        self.rejecting = (
            self._open_deadline,
            time.monotonic_ns,
            CircuitState.OPEN,
            generation,
            self._open_until,
            None,
        )
        last = self._last
        if (
            epoch != self._epoch
            or not self._open_deadline
            or last is None
            or last.generation != generation
        ):
            self.rejecting = None

    def _rearm(self) -> None:
        """Set the call path's shortcuts from the newest reply (see ``__init__``).

        The cached verdict is the one ``_local_verdict`` would give, minus the LISTEN
        check, which each call still makes on the flag; outcomes are queued exactly when
        ``_queued`` would queue them.
        """
        last = self._last
        if last is None or last.state is not CircuitState.CLOSED or self._closed:
            self._succeeded = self._failed = _UNQUEUED
            self._fast = None
            return
        generation = last.generation
        if self._queue is not None:
            if self._succeeded[1] != generation:
                self._succeeded = (True, generation, None)
                self._failed = (False, generation, None)
            if not self._flusher_started:
                self._flusher_started = True
                self._host.start_flusher()
        flag = self._host.listening_flag(self.namespace) if self._cached else None
        if flag is None or not self._trusted or self._open_deadline:
            self._fast = None
            return
        admission = self._admit_closed
        if admission.generation != generation:
            admission = self._admit_closed = Admission(True, CircuitState.CLOSED, generation, None)
        self._fast = (admission, flag)

    def _local_verdict(self) -> Admission | None:
        deadline = self._open_deadline
        if deadline:
            now = time.monotonic_ns()
            if now < deadline:
                last = self._last
                generation = last.generation if last is not None else 0
                return Admission(False, CircuitState.OPEN, generation, self._open_until - now)
            # (A published verdict past its deadline rejects nothing: left in place.)
            self._open_deadline = 0
        if self._cached and self._trusted and self._host.listening(self.namespace):
            last = self._last
            if last is not None and last.state is CircuitState.CLOSED:
                admission = self._admit_closed
                if admission.generation != last.generation:
                    admission = self._admit_closed = Admission(
                        True, CircuitState.CLOSED, last.generation, None
                    )
                return admission
        return None

    def _admitted(self, row: tuple[Any, ...], epoch: int) -> Admission:
        adm = queries.admission(row)
        self._heard(Reply(adm.state, adm.generation), epoch)
        if self._cached and not self._listen_requested:
            # Cached admission needs LISTEN: opened on the first call, not at import.
            self._listen_requested = True
            self._host.listen()
        if adm.state is CircuitState.OPEN and adm.retry_after and epoch == self._epoch:
            # A remaining duration, on our monotonic clock: never an absolute server time.
            # It is held for the whole cooldown only while NOTIFY can end it early (a
            # peer forcing CLOSED, a reset); unheard, for a second at most.
            hold = adm.retry_after
            unheard = not self._host.listening(self.namespace)
            if unheard:
                # Held verdicts need LISTEN too: opened the first time one is held. The
                # listener reads the verdict again once listening, and extends it.
                self._host.listen()
                hold = min(hold, UNHEARD_OPEN_HOLD_NS)
            now = time.monotonic_ns()
            self._open_until = now + adm.retry_after
            self._open_unheard = unheard
            self._open_generation = adm.generation
            self._open_deadline = now + hold
            last = self._last
            if (last is not None and last.generation > adm.generation) or epoch != self._epoch:
                # A newer transition was heard, or the cache invalidated (LISTEN lost),
                # while this verdict was being written.
                self._open_deadline = 0
            else:
                self._publish_open(epoch)
            self._rearm()
        return adm

    def _recorded(self, row: tuple[Any, ...], epoch: int) -> Reply:
        return self._heard(queries.reply(row), epoch)

    def _queued(self, success: bool, generation: int | None, duration: int | None) -> Reply | None:
        """Queue the outcome if it belongs to a CLOSED phase; half-open trials go at once.

        The caller then sees to a queue grown past its limit (``_overflowed``)."""
        queue, last = self._queue, self._last
        if (
            queue is not None
            and last is not None
            and last.state is CircuitState.CLOSED
            and generation == last.generation
            and not self._closed
        ):
            queue.put(success, generation, duration)
            if not self._flusher_started:
                self._flusher_started = True
                self._host.start_flusher()
            return last
        return None

    def _record_params(
        self, success: bool, generation: int | None, duration: int | None
    ) -> dict[str, Any]:
        return {
            "key": self.resource_key,
            "success": success,
            "namespace": self.namespace,
            "generation": generation,
            "duration": queries.duration(duration),
        }

    def _release_params(self, generation: int | None) -> dict[str, Any]:
        return {"key": self.resource_key, "namespace": self.namespace, "generation": generation}

    def _force_params(self, state: CircuitState, hold: bool) -> dict[str, Any]:
        return {
            "key": self.resource_key,
            "state": state.value,
            "namespace": self.namespace,
            "hold": hold,
        }

    # -- the call path ------------------------------------------------------------------

    def acquire(self) -> Admission:
        fast = self._fast
        if fast is not None and fast[1].is_set():
            return fast[0]
        host, epoch = self._host, self._epoch
        # Without a held OPEN verdict nor cached admission there is no local verdict.
        if self._open_deadline or self._cached:
            verdict = self._local_verdict()
            if verdict is not None:
                return verdict
        return self._admitted(host.fetch(self, host.statements.acquire, self._key_params), epoch)

    async def aacquire(self) -> Admission:
        fast = self._fast
        if fast is not None and fast[1].is_set():
            return fast[0]
        host, epoch = self._host, self._epoch
        return self._local_verdict() or self._admitted(
            await host.afetch(self, host.statements.acquire, self._key_params), epoch
        )

    def record(self, success: bool, generation: int | None, duration: int | None = None) -> Reply:
        # The queued path of _queued inlined: an outcome of the current CLOSED phase
        # is appended as the tuple prepared for it, with no allocation.
        outcome = self._succeeded if success else self._failed
        last = self._last
        if outcome[1] == generation and duration is None and last is not None:
            queue = self._queue
            items = queue.items  # type: ignore[union-attr]
            items.append(outcome)
            if len(items) > queue.limit:  # type: ignore[union-attr]
                self._overflowed(queue)  # type: ignore[arg-type]
            return last
        host, epoch = self._host, self._epoch
        queued = self._queued(success, generation, duration) if self._queue is not None else None
        if queued is not None:
            queue = self._queue
            if queue is not None and len(queue) > queue.limit:
                self._overflowed(queue)
            return queued
        return self._recorded(
            host.fetch(
                self, host.statements.record, self._record_params(success, generation, duration)
            ),
            epoch,
        )

    async def arecord(
        self, success: bool, generation: int | None, duration: int | None = None
    ) -> Reply:
        host, epoch = self._host, self._epoch
        queued = self._queued(success, generation, duration)
        if queued is not None:
            queue = self._queue
            if queue is not None and len(queue) > queue.limit:
                await self._aoverflowed(queue)
            return queued
        return self._recorded(
            await host.afetch(
                self, host.statements.record, self._record_params(success, generation, duration)
            ),
            epoch,
        )

    def release(self, generation: int | None) -> Reply:
        host, epoch = self._host, self._epoch
        return self._recorded(
            host.fetch(self, host.statements.release, self._release_params(generation)), epoch
        )

    async def arelease(self, generation: int | None) -> Reply:
        host, epoch = self._host, self._epoch
        return self._recorded(
            await host.afetch(self, host.statements.release, self._release_params(generation)),
            epoch,
        )

    # -- batches ------------------------------------------------------------------------

    def _overflowed(self, queue: OutcomeQueue) -> None:
        """More than the limit waiting while the database answers: this caller flushes
        (back-pressure, about one round trip per ``limit`` calls) rather than shedding
        what a healthy database would take. Once a flush has failed (an outage: the store
        then backs off, so a flush fails at once), the oldest outcomes are shed, counted
        and logged instead."""
        if not self._last_flush_failed:
            try:
                self.flush()
            except Exception:  # pragma: no cover - a bug, not an outage: not the call's
                logger.exception("flushing batched outcomes failed")
        queue.shed()

    async def _aoverflowed(self, queue: OutcomeQueue) -> None:
        """The coroutine twin of ``_overflowed``: the caller awaits the flush."""
        if not self._last_flush_failed:
            try:
                await self.aflush()
            except Exception:  # pragma: no cover - a bug, not an outage: not the call's
                logger.exception("flushing batched outcomes failed")
        queue.shed()

    def flush(self, *, final: bool = False) -> StorageError | StorageNotUsable | None:
        """Send the queued outcomes with ``rc_record_many``, in statements of bounded size.

        What cannot be sent stays queued (and the error is returned), also while the store
        is not usable (a database or login refused: the flusher would otherwise lose a
        batch and log it every interval). ``final`` is the last attempt before closing:
        it is made even while the store backs off.
        """
        queue = self._queue
        if queue is None:
            return None
        failure = None
        with self._flushing:
            # What is queued now, not what keeps arriving meanwhile: a flush ends.
            for _ in range(-(-len(queue) // self._batch_size)):
                batch = queue.take(self._batch_size)
                if not batch:
                    break
                epoch = self._epoch
                statement, params = self._batch_statement(batch)
                try:
                    row = self._host.fetch(self, statement, params, force=final)
                except (StorageError, StorageNotUsable) as exc:
                    failure = self._unsent(queue, batch, exc)
                    break
                self._flushed(row, epoch)
            self._last_flush_failed = failure is not None
        self._report_shed(queue, final)
        return failure

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
        failed = False
        try:
            for _ in range(-(-len(queue) // self._batch_size)):
                batch = queue.take(self._batch_size)
                if not batch:
                    break
                epoch = self._epoch
                statement, params = self._batch_statement(batch)
                try:
                    row = await self._host.afetch(self, statement, params)
                except (StorageError, StorageNotUsable) as exc:
                    self._unsent(queue, batch, exc)
                    failed = True
                    break
                self._flushed(row, epoch)
            self._last_flush_failed = failed
        finally:
            self._flushing.release()
        self._report_shed(queue, False)

    def _unsent(
        self, queue: OutcomeQueue, batch: list[Outcome], exc: StorageError | StorageNotUsable
    ) -> StorageError | StorageNotUsable:
        queue.give_back(batch)
        if getattr(exc.__cause__, "sqlstate", None) == "57014":
            # The statement outran statement_timeout: send less at a time.
            self._batch_size = max(_MIN_BATCH, self._batch_size // 2)
        return exc

    def discard_queued(self) -> int:
        """Drop every queued outcome (the store closed: nothing sends them); how many."""
        queue = self._queue
        if queue is None:
            return 0
        return len(queue.take(MAX_RUN_TOTAL))

    def report_shed(self) -> None:
        """Log the outcomes shed and not yet told of, now (at close)."""
        if self._queue is not None:
            self._report_shed(self._queue, True)

    def _report_shed(self, queue: OutcomeQueue, final: bool) -> None:
        now = time.monotonic()
        if not final and now - self._shed_logged_at < _SHED_LOG_INTERVAL:
            return
        shed = queue.unreported()
        if shed:
            self._shed_logged_at = now
            logger.warning(
                "dropped %d batched outcomes of breaker %r (namespace %r): more than %d were "
                "waiting, because the database was unavailable or slower than the calls",
                shed,
                self.resource_key,
                self.namespace,
                queue.limit,
            )

    def _batch_statement(self, batch: list[Outcome]) -> tuple[Any, dict[str, Any]]:
        """rc_record_runs with the batch as runs; rc_record_many when durations are kept."""
        statements = self._host.statements
        literals = runs(batch)
        if literals is not None:
            return statements.record_runs, {
                "key": self.resource_key,
                "namespace": self.namespace,
                "counts": literals[0],
                "successes": literals[1],
                "generations": literals[2],
            }
        successes, generations, durations = split(batch)
        return statements.record_many, {
            "key": self.resource_key,
            "namespace": self.namespace,
            "successes": successes,
            "generations": generations,
            "durations": None if durations is None else [queries.duration(d) for d in durations],
        }

    def _flushed(self, row: tuple[Any, ...], epoch: int) -> None:
        if self._recorded(row, epoch).state is not CircuitState.CLOSED:
            self._trusted = False
            self._fast = None

    # -- admin ----------------------------------------------------------------------------

    def force(self, state: CircuitState, *, hold: bool = False) -> Reply:
        self.invalidate()
        host, epoch = self._host, self._epoch
        return self._recorded(
            host.fetch(self, host.statements.force, self._force_params(state, hold)), epoch
        )

    async def aforce(self, state: CircuitState, *, hold: bool = False) -> Reply:
        self.invalidate()
        host, epoch = self._host, self._epoch
        return self._recorded(
            await host.afetch(self, host.statements.force, self._force_params(state, hold)),
            epoch,
        )

    def reset(self) -> Reply:
        self.invalidate()
        host, epoch = self._host, self._epoch
        return self._recorded(host.fetch(self, host.statements.reset, self._key_params), epoch)

    async def areset(self) -> Reply:
        self.invalidate()
        host, epoch = self._host, self._epoch
        return self._recorded(
            await host.afetch(self, host.statements.reset, self._key_params), epoch
        )

    def snapshot(self) -> Snapshot:
        self.flush()
        host, epoch = self._host, self._epoch
        row = host.fetch(self, host.statements.status, self._key_params, missing_ok=True)
        return self._read(row, epoch)

    async def asnapshot(self) -> Snapshot:
        await self.aflush()
        host, epoch = self._host, self._epoch
        row = await host.afetch(self, host.statements.status, self._key_params, missing_ok=True)
        return self._read(row, epoch)

    def _read(self, row: tuple[Any, ...] | None, epoch: int) -> Snapshot:
        snap = queries.snapshot(row, self.config)
        self._heard(Reply(snap.state, snap.generation), epoch)
        return snap
