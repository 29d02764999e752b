"""A fleet of real processes sharing one breaker through PostgreSQL.

Each worker (``tests/_fleet_workers.py``, started with multiprocessing "spawn") has
its own store, pool and policy, as separate application processes would. The
database's commit order is captured by an audit trigger on the breaker table (an
observer only: it changes nothing), so the fleet's outcome can be compared with
the Python state machine, and with a single-process stream, fed in that order.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from fractions import Fraction
from typing import Any

import psycopg
import pytest

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit import _machine as m
from resilient_circuit.storage import InMemoryStorage, PostgresStorage

from . import _fleet_workers as workers

CTX = multiprocessing.get_context("spawn")
KEY = "payments"
NAMESPACE = "fleet"
# Long enough that a loaded machine cannot let a trial permit expire before the call
# meant to be refused by it; a test waits the permit out for real.
HALF_OPEN_TIMEOUT = timedelta(seconds=3)
PROCESSES = 8

AUDIT = """
CREATE TABLE rc_audit (
    seq bigserial PRIMARY KEY,
    op text NOT NULL,
    state text NOT NULL,
    generation bigint NOT NULL,
    execution_log boolean[] NOT NULL,
    failure_count integer NOT NULL,
    permits timestamptz[] NOT NULL,
    successes bigint NOT NULL,
    failures bigint NOT NULL
);
CREATE FUNCTION rc_audit_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    -- Runs under the row lock the rc_* function holds, so seq is the commit order.
    INSERT INTO rc_audit (op, state, generation, execution_log, failure_count, permits,
                          successes, failures)
    VALUES (TG_OP, NEW.state, NEW.generation, NEW.execution_log, NEW.failure_count,
            NEW.permits, NEW.successes, NEW.failures);
    RETURN NULL;
END;
$$;
CREATE TRIGGER rc_audit AFTER INSERT OR UPDATE ON rc_circuit_breakers
FOR EACH ROW EXECUTE FUNCTION rc_audit_row();
"""


# ------------------------------------------------------------------------------ helpers


@contextmanager
def processes(target: Callable[..., None], *arg_lists: tuple[Any, ...]) -> Iterator[None]:
    """Run ``target`` once per argument tuple, each in its own spawned process."""
    started = [CTX.Process(target=target, args=args, daemon=True) for args in arg_lists]
    for process in started:
        process.start()
    try:
        yield
    finally:
        for process in started:
            process.join(60)
            if process.is_alive():
                process.kill()
                process.join()
        for process in started:
            process.close()


@contextmanager
def queue() -> Iterator[Any]:
    made = CTX.Queue()
    try:
        yield made
    finally:
        made.close()
        made.join_thread()


def audited(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT)


def audit(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT op, state, generation, execution_log, failure_count, permits,"
            " successes, failures FROM rc_audit ORDER BY seq"
        )
        names = [column.name for column in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def row(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT state, generation, execution_log, failure_count, successes, failures,"
            " cardinality(permits) AS permits FROM rc_circuit_breakers"
            " WHERE resource_key = %s AND namespace = %s",
            (KEY, NAMESPACE),
        )
        found = cur.fetchone()
        assert found is not None
        return dict(zip([c.name for c in cur.description or ()], found, strict=True))


def replay_records(audit_rows: list[dict[str, Any]], config: m.Config) -> list[bool]:
    """Feed the recorded outcomes, in commit order, to the Python state machine.

    Every update the audit saw must be exactly one record, and after each one the
    row must hold exactly the state, generation, window and consecutive failures
    the machine computes. Returns the outcomes in commit order.
    """
    assert audit_rows[0]["op"] == "INSERT"
    state = m.INITIAL
    successes, failures = audit_rows[0]["successes"], audit_rows[0]["failures"]
    order: list[bool] = []
    for index, seen in enumerate(audit_rows[1:], start=1):
        assert seen["op"] == "UPDATE"
        delta = (seen["successes"] - successes, seen["failures"] - failures)
        assert delta in ((1, 0), (0, 1)), (index, delta)
        successes, failures = seen["successes"], seen["failures"]
        success = delta == (1, 0)
        order.append(success)
        # Every call of these fleets was admitted under generation 0 (checked by the tests).
        state = m.record(state, config, 0, success, 0)
        assert (state.state.value, state.generation, state.window, state.failure_count) == (
            seen["state"],
            seen["generation"],
            tuple(seen["execution_log"]),
            seen["failure_count"],
        ), index
    return order


def single_process_trip(order: list[bool], config: dict[str, Any]) -> int | None:
    """Where one process calling with these outcomes, in this order, sees its breaker open."""
    policy = CircuitProtectorPolicy(resource_key=KEY, storage=InMemoryStorage(), **config)

    @policy
    def call(ok: bool) -> None:
        if not ok:
            raise workers.Failed

    for index, ok in enumerate(order):
        try:
            call(ok)
        except workers.Failed:
            pass
        if policy.status is CircuitState.OPEN:
            return index
    return None


def configure(dsn: str, config: dict[str, Any]) -> None:
    """Create the breaker row with the fleet's configuration before the fleet starts."""
    store = PostgresStorage(dsn, namespace=NAMESPACE)
    try:
        CircuitProtectorPolicy(resource_key=KEY, storage=store, **config)
    finally:
        store.close()


def calls_of(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [call for result in results for call in result["calls"]]


# -------------------------------------------------------------------- nothing is lost


def test_eight_processes_lose_no_outcome(pg_dsn: str) -> None:
    """8 processes x 300 calls on one key: counters and window are exactly what the fleet did."""
    # 240 failures in all can never be half of a 500-outcome window, whatever the
    # interleaving: the breaker must stay CLOSED and admit every call.
    config = {"failure_limit": Fraction(1, 2), "window_size": 500}
    audited(pg_dsn)
    configure(pg_dsn, config)
    streams = [[call % 10 != worker % 10 for call in range(300)] for worker in range(PROCESSES)]
    # Every worker builds its policy before any calls: a barrier, not an event.
    start = CTX.Barrier(PROCESSES + 1)
    with (
        queue() as out,
        processes(
            workers.run_stream,
            *((pg_dsn, NAMESPACE, KEY, config, stream, start, out) for stream in streams),
        ),
    ):
        start.wait(60)
        results = [out.get(timeout=120) for _ in range(PROCESSES)]
    calls = calls_of(results)
    assert len(calls) == PROCESSES * 300
    assert {call[:2] for call in calls} == {("ran", 0)}, "every call ran, admitted under gen 0"
    assert all(result["events"] == [] for result in results)
    ran_ok = sum(1 for call in calls if call[2])
    ran_failed = len(calls) - ran_ok
    assert (ran_ok, ran_failed) == (2160, 240)

    final = row(pg_dsn)
    assert (final["successes"], final["failures"]) == (ran_ok, ran_failed)
    assert (final["state"], final["generation"]) == ("CLOSED", 0)
    order = replay_records(audit(pg_dsn), m.Config.build(**config))
    assert len(order) == len(calls)
    assert tuple(final["execution_log"]) == tuple(order[-500:])


def test_mixed_streams_trip_exactly_where_the_commit_order_says(pg_dsn: str) -> None:
    """The fleet's breaker opens at the very record where one process fed that order would."""
    config = {
        "failure_limit": Fraction(1, 2),
        "window_size": 20,
        "cooldown": timedelta(hours=1),
    }
    audited(pg_dsn)
    configure(pg_dsn, config)
    # Healthy for 100 calls, then mostly failing: the fleet trips some time after
    # most workers reach their bad phase; where exactly depends on the interleaving.
    streams = []
    for worker in range(PROCESSES):
        rng = random.Random(worker)
        streams.append([rng.random() > (0.1 if call < 100 else 0.8) for call in range(200)])
    # Every worker builds its policy before any calls: a barrier, not an event.
    start = CTX.Barrier(PROCESSES + 1)
    with (
        queue() as out,
        processes(
            workers.run_stream,
            *((pg_dsn, NAMESPACE, KEY, config, stream, start, out) for stream in streams),
        ),
    ):
        start.wait(60)
        results = [out.get(timeout=120) for _ in range(PROCESSES)]

    calls = calls_of(results)
    ran = [call for call in calls if call[0] == "ran"]
    assert {call[1] for call in ran} == {0}, "no call was admitted after the trip"
    final = row(pg_dsn)
    assert (final["state"], final["generation"]) == ("OPEN", 1)
    assert (final["successes"], final["failures"]) == (
        sum(1 for call in ran if call[2]),
        sum(1 for call in ran if not call[2]),
    )

    order = replay_records(audit(pg_dsn), m.Config.build(**config))
    assert len(order) == len(ran)
    states = [entry["state"] for entry in audit(pg_dsn)[1:]]
    tripped_at = states.index("OPEN")
    assert single_process_trip(order, config) == tripped_at
    # Only calls already admitted when it tripped finish afterwards: one per other process.
    assert len(order) - tripped_at - 1 <= PROCESSES - 1

    for result in results:
        kinds = [call[0] for call in result["calls"]]
        first_rejection = kinds.index("rejected")
        assert set(kinds[first_rejection:]) == {"rejected"}, "once rejected, always rejected"
        for call in result["calls"][first_rejection:]:
            assert call[2] == "OPEN"
            assert 59 * 60 < call[1] <= 3600
        # Each process saw the trip once, its own or a peer's.
        assert result["events"] == [("CLOSED", "OPEN")]


# ------------------------------------------------------------------- peers observed


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_processes_built_before_a_peer_trip_reject_their_next_call(pg_dsn: str, mode: str) -> None:
    """Processes made before a peer's trip reject their very next call, unrun, and say so once."""
    observers = 3
    config = {"cooldown": timedelta(hours=1)}
    ready = [CTX.Event() for _ in range(observers)]
    tripped = CTX.Event()
    store = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    try:
        with (
            queue() as out,
            processes(
                workers.observe_peer_trip,
                *((pg_dsn, NAMESPACE, KEY, config, mode, each, tripped, out) for each in ready),
            ),
        ):
            for each in ready:
                assert each.wait(60)
            peer = CircuitProtectorPolicy(resource_key=KEY, storage=store, **config)

            @peer
            def fail() -> None:
                raise workers.Failed

            with pytest.raises(workers.Failed):
                fail()
            assert peer.status is CircuitState.OPEN
            tripped.set()
            results = [out.get(timeout=60) for _ in range(observers)]
    finally:
        store.close()
    for result in results:
        assert result["ran"] == [0], "no call ran after the peer's trip"
        assert [outcome[0] for outcome in result["outcomes"]] == ["rejected"] * 5
        for _, retry_after, state in result["outcomes"]:
            assert state == "OPEN"
            assert 59 * 60 < retry_after <= 3600
        assert result["events"] == [("CLOSED", "OPEN")]


# ---------------------------------------------------------------------- half-open cap


def test_half_open_runs_no_more_trials_than_outcomes_needed_across_processes(
    pg_dsn: str,
) -> None:
    """Eight processes race a half-open breaker needing 3 outcomes: exactly 3 trials run."""
    config = {
        "success_limit": Fraction(2, 3),
        "half_open_timeout": timedelta(seconds=30),
    }
    store = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    try:
        admin = CircuitProtectorPolicy(resource_key=KEY, storage=store, **config)
        # OPEN with no cooldown: the first caller turns it HALF_OPEN, racing the others.
        admin.status = CircuitState.OPEN
        opened = admin.snapshot().generation
        start = CTX.Barrier(PROCESSES)
        release = CTX.Event()
        executions = CTX.Value("i", 0)
        with (
            queue() as out,
            processes(
                workers.half_open_trial,
                *(
                    (pg_dsn, NAMESPACE, KEY, config, start, release, executions, out)
                    for _ in range(PROCESSES)
                ),
            ),
        ):
            first = [out.get(timeout=60) for _ in range(PROCESSES)]
            # Every process has now either been rejected or is inside its trial.
            running = [msg for msg in first if msg[0] == "running"]
            rejected = [msg for msg in first if msg[0] == "rejected"]
            assert (len(running), len(rejected)) == (3, PROCESSES - 3)
            assert executions.value == 3
            held = row(pg_dsn)
            assert (held["state"], held["generation"], held["permits"]) == (
                "HALF_OPEN",
                opened + 1,
                3,
            )
            assert {msg[2] for msg in running} == {opened + 1}
            for _, _, retry_after, state in rejected:
                assert state == "HALF_OPEN"
                assert 0 < retry_after <= 30
            release.set()
            done = [out.get(timeout=60) for _ in range(3)]
        assert [msg[0] for msg in done] == ["done"] * 3
        assert executions.value == 3
        final = row(pg_dsn)
        assert (final["state"], final["generation"], final["permits"]) == (
            "CLOSED",
            opened + 2,
            0,
        )
    finally:
        store.close()


def test_a_killed_trial_callers_permit_is_released_after_half_open_timeout(
    pg_dsn: str,
) -> None:
    """SIGKILL a process inside its trial: others wait out half_open_timeout, then probe."""
    config = {"half_open_timeout": HALF_OPEN_TIMEOUT}
    store = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    try:
        policy = CircuitProtectorPolicy(resource_key=KEY, storage=store, **config)
        policy.status = CircuitState.OPEN
        ran: list[int] = []

        @policy
        def call() -> str:
            ran.append(1)
            return "ok"

        running = CTX.Event()
        crasher = CTX.Process(
            target=workers.crash_during_trial,
            args=(pg_dsn, NAMESPACE, KEY, config, running),
            daemon=True,
        )
        crasher.start()
        try:
            assert running.wait(60)
            assert crasher.pid is not None
            os.kill(crasher.pid, signal.SIGKILL)
            crasher.join(30)
            assert crasher.exitcode == -signal.SIGKILL
        finally:
            if crasher.is_alive():  # pragma: no cover - only if the kill failed
                crasher.kill()
                crasher.join()
            crasher.close()
        trial_generation = row(pg_dsn)["generation"]
        with pytest.raises(ProtectedCallError) as rejected:
            call()
        assert rejected.value.state is CircuitState.HALF_OPEN
        assert rejected.value.retry_after is not None
        assert timedelta(0) < rejected.value.retry_after <= HALF_OPEN_TIMEOUT
        assert ran == []
        time.sleep(rejected.value.retry_after.total_seconds() + 0.05)
        assert call() == "ok"  # the dead caller's permit expired: this call was the trial
        assert ran == [1]
        final = row(pg_dsn)
        assert (final["state"], final["generation"]) == ("CLOSED", trial_generation + 1)
    finally:
        store.close()


def test_a_late_outcome_from_an_older_phase_never_decides_the_new_one(pg_dsn: str) -> None:
    """A trial that outlives its phase reports success; the newer phase ignores it."""
    # Two outcomes per half-open phase; one success in two closes it.
    config = {"success_limit": Fraction(1, 2), "half_open_timeout": HALF_OPEN_TIMEOUT}
    store = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    try:
        policy = CircuitProtectorPolicy(resource_key=KEY, storage=store, **config)

        @policy
        def call(ok: bool) -> str:
            if not ok:
                raise workers.Failed
            return "ok"

        policy.status = CircuitState.OPEN
        admitted, finish = CTX.Event(), CTX.Event()
        with (
            queue() as out,
            processes(workers.late_trial, (pg_dsn, NAMESPACE, KEY, config, admitted, finish, out)),
        ):
            assert admitted.wait(60)
            old_phase = row(pg_dsn)["generation"]
            # Here: one failure, then wait out the slow trial's permit, another failure.
            with pytest.raises(workers.Failed):
                call(False)
            with pytest.raises(ProtectedCallError) as rejected:
                call(False)
            assert rejected.value.retry_after is not None
            time.sleep(rejected.value.retry_after.total_seconds() + 0.05)
            with pytest.raises(workers.Failed):
                call(False)  # the phase decides: OPEN (no cooldown)
            with pytest.raises(workers.Failed):
                call(False)  # a new phase's first trial fails: one more outcome needed
            newer = row(pg_dsn)
            assert (newer["state"], newer["generation"], newer["execution_log"]) == (
                "HALF_OPEN",
                old_phase + 2,
                [False],
            )
            finish.set()
            late = out.get(timeout=60)
        assert late["result"] == "ok"
        assert late["admitted"] == [old_phase]
        after = row(pg_dsn)
        # Counted, but it did not close the newer phase (with it, [F, S] would have).
        assert (after["state"], after["generation"], after["execution_log"]) == (
            "HALF_OPEN",
            old_phase + 2,
            [False],
        )
        assert (after["successes"], after["failures"]) == (newer["successes"] + 1, 3)
        assert late["reply"] == ("HALF_OPEN", old_phase + 2)
        assert call(True) == "ok"  # the newer phase is decided by its own trials
        assert row(pg_dsn)["state"] == "CLOSED"
    finally:
        store.close()


def test_a_peer_forcing_closed_reaches_a_process_holding_an_open_verdict(pg_dsn: str) -> None:
    """A process holding an OPEN verdict obeys another client's rc_force to CLOSED once notified."""
    stores = [PostgresStorage(pg_dsn, namespace=NAMESPACE) for _ in range(2)]
    try:
        events: list[tuple[CircuitState, CircuitState]] = []
        tripper = CircuitProtectorPolicy(
            resource_key=KEY, storage=stores[0], cooldown=timedelta(hours=1)
        )
        holder = CircuitProtectorPolicy(
            resource_key=KEY,
            storage=stores[1],
            cooldown=timedelta(hours=1),
            on_status_change=lambda p, old, new: events.append((old, new)),
        )

        @tripper
        def fail() -> None:
            raise workers.Failed

        @holder
        def call() -> str:
            return "ok"

        with pytest.raises(workers.Failed):
            fail()
        with pytest.raises(ProtectedCallError):
            call()
        assert stores[1].wait_listening()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT * FROM rc_force(%s, 'CLOSED', %s)", (KEY, NAMESPACE))
        # The OPEN verdict is revoked by the transition's NOTIFY, milliseconds later.
        deadline = time.monotonic() + 5
        while holder._breaker._open_deadline and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
        assert call() == "ok"
        assert events == [
            (CircuitState.CLOSED, CircuitState.OPEN),
            (CircuitState.OPEN, CircuitState.CLOSED),
        ]
    finally:
        for store in stores:
            store.close()
