"""Random configurations and event sequences, compared step by step across every machine.

The same sequence drives the reference model of DESIGN §3 (tests/_reference_model.py),
the in-memory store, the PL/pgSQL functions (explicit ``now``) and both stores through
their public API (policies and breaker handles, sync and async); after every step their
answers and whole states must agree.
Hypothesis runs derandomised, so a failure reproduces on every run (the report prints
the example and a ``@reproduce_failure`` blob).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit._machine import Admission, Config
from resilient_circuit.storage import InMemoryStorage, PostgresStorage
from resilient_circuit.storage.base import Breaker, Observed, Snapshot
from tests._reference_model import RefBreaker, RefConfig

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
EPOCH_NS = 1_000_000_000_000
MS = 1_000_000
NAMESPACE = "differential"
HOUR_MS = 3_600_000

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def ref_configs(draw: st.DrawFn, *, timeless: bool = False) -> RefConfig:
    """Limits whose thresholds are often not whole numbers; short times unless timeless."""
    den = draw(st.integers(1, 7))
    failure_limit = Fraction(draw(st.integers(1, den)), den)
    window = draw(st.one_of(st.none(), st.integers(1, 8)))
    s_den = draw(st.integers(1, 5))
    success_limit = draw(
        st.one_of(st.none(), st.integers(1, s_den).map(lambda k: Fraction(k, s_den)))
    )
    if timeless:
        # The PostgreSQL store reads the server's clock: only a cooldown of nothing or of
        # an hour, and permits that never expire, make its answers independent of it.
        cooldown, timeout = draw(st.sampled_from([0, HOUR_MS])), HOUR_MS
    else:
        cooldown, timeout = draw(st.integers(0, 30)), draw(st.integers(1, 40))
    return RefConfig(failure_limit, window, success_limit, cooldown, timeout)


GENERATIONS = ("admitted", "admitted", "current", "stale", "none")
STATES = ("CLOSED", "OPEN", "HALF_OPEN")


# Operators' steps are rare: each one starts a fresh phase, undoing what outcomes built.
KINDS = ("acquire",) * 7 + ("record",) * 10 + ("force", "reset", "configure")


@st.composite
def events(draw: st.DrawFn, configs: st.SearchStrategy[RefConfig]) -> list[tuple[Any, ...]]:
    """(ms elapsed, op, argument): mostly calls and outcomes, sometimes operators."""
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(5, 50))):
        kind = draw(st.sampled_from(KINDS))
        if kind == "record":
            arg: Any = (draw(st.booleans()), draw(st.sampled_from(GENERATIONS)))
        elif kind == "force":
            arg = draw(st.sampled_from(STATES))
        elif kind == "configure":
            arg = draw(configs)
        else:
            arg = None
        steps.append((draw(st.integers(0, 15)), kind, arg))
    return steps


def _config(ref: RefConfig) -> Config:
    return Config.build(
        failure_limit=ref.failure_limit,
        window_size=ref.window_size,
        success_limit=ref.success_limit,
        cooldown=timedelta(milliseconds=ref.cooldown_ms),
        half_open_timeout=timedelta(milliseconds=ref.half_open_timeout_ms),
    )


def _model_state(ref: RefBreaker) -> dict[str, Any]:
    return {
        "state": ref.state,
        "generation": ref.generation,
        "window": tuple(ref.window),
        "failure_count": ref.failure_count,
        "open_until_ms": ref.open_until_ms,
        "permits_ms": tuple(ref.permits_ms),
        "successes": ref.successes,
        "failures": ref.failures,
    }


@dataclass
class _Generations:
    """Which generation a record carries: one an acquire handed out, or another."""

    admitted: list[int]

    def pick(self, how: str, model: RefBreaker) -> int | None:
        if how == "admitted":
            return self.admitted.pop(0) if self.admitted else model.generation
        if how == "current":
            return model.generation
        if how == "stale":
            return model.generation - 1
        return None


# ------------------------------------------------- model, memory store, SQL functions


class _SqlBreaker:
    """The PL/pgSQL functions at an explicit time, on one key."""

    def __init__(self, conn: psycopg.Connection[Any], key: str) -> None:
        self.conn, self.key = conn, key

    def _one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        row = self.conn.execute(query, params).fetchone()
        assert row is not None
        return tuple(row)

    def configure(self, ref: RefConfig) -> tuple[Any, ...]:
        s = ref.success_limit
        return self._one(
            "SELECT * FROM rc_configure(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.key,
                NAMESPACE,
                ref.failure_limit.numerator,
                ref.failure_limit.denominator,
                ref.window_size,
                None if s is None else s.numerator,
                None if s is None else s.denominator,
                timedelta(milliseconds=ref.cooldown_ms),
                timedelta(milliseconds=ref.half_open_timeout_ms),
            ),
        )

    def acquire(self, now: datetime) -> tuple[Any, ...]:
        permitted, state, generation, retry_after = self._one(
            "SELECT * FROM rc_try_acquire_at(%s, %s, %s)", (self.key, NAMESPACE, now)
        )
        wait = None if retry_after is None else retry_after // timedelta(milliseconds=1)
        return permitted, state, generation, wait

    def record(self, now: datetime, success: bool, generation: int | None) -> tuple[Any, ...]:
        return self._one(
            "SELECT * FROM rc_record_at(%s, %s, %s, %s, %s)",
            (self.key, success, NAMESPACE, generation, now),
        )

    def force(self, now: datetime, target: str) -> tuple[Any, ...]:
        return self._one(
            "SELECT * FROM rc_force_at(%s, %s, %s, %s)", (self.key, target, NAMESPACE, now)
        )

    def reset(self, now: datetime) -> tuple[Any, ...]:
        return self._one("SELECT * FROM rc_reset_at(%s, %s, %s)", (self.key, NAMESPACE, now))

    def state(self) -> tuple[dict[str, Any], RefConfig]:
        row = self._one(
            "SELECT state, generation, execution_log, failure_count, open_until, permits,"
            " successes, failures, failure_limit_num, failure_limit_den, window_size,"
            " success_limit_num, success_limit_den, cooldown, half_open_timeout"
            " FROM rc_circuit_breakers WHERE resource_key = %s AND namespace = %s",
            (self.key, NAMESPACE),
        )
        ms = timedelta(milliseconds=1)

        def at(moment: datetime | None) -> int | None:
            return None if moment is None else (moment - EPOCH) // ms

        state = {
            "state": row[0],
            "generation": row[1],
            "window": tuple(row[2]),
            "failure_count": row[3],
            "open_until_ms": at(row[4]),
            "permits_ms": tuple(at(p) for p in row[5]),
            "successes": row[6],
            "failures": row[7],
        }
        config = RefConfig(
            Fraction(row[8], row[9]),
            row[10],
            None if row[11] is None else Fraction(row[11], row[12]),
            row[13] // ms,
            row[14] // ms,
        )
        return state, config


def _memory_state(breaker: Any) -> dict[str, Any]:
    st_ = breaker.state
    # The machine keeps the window's failure count beside the window: the two must agree.
    assert st_.window_failures == st_.window.count(False), st_

    def at(ns: int | None) -> int | None:
        return None if ns is None else (ns - EPOCH_NS) // MS

    return {
        "state": st_.state.value,
        "generation": st_.generation,
        "window": st_.window,
        "failure_count": st_.failure_count,
        "open_until_ms": at(st_.open_until),
        "permits_ms": tuple(at(p) for p in st_.permits),
        "successes": breaker.successes,
        "failures": breaker.failures,
    }


def _normalised(ref: RefConfig) -> RefConfig:
    return RefConfig(
        ref.failure_limit, ref.n, ref.success_limit, ref.cooldown_ms, ref.half_open_timeout_ms
    )


def test_memory_store_and_sql_functions_follow_the_model(pg_dsn: str) -> None:
    """The in-memory store and the SQL functions answer and move exactly as the model does."""
    keys = itertools.count()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:

        @settings(SETTINGS, max_examples=200)
        @given(ref_configs(), events(ref_configs()))
        def run(initial: RefConfig, steps: list[tuple[Any, ...]]) -> None:
            model = RefBreaker(initial)
            now = [EPOCH_NS]
            memory = InMemoryStorage(namespace=NAMESPACE, clock=lambda: now[0]).breaker(
                "k", NAMESPACE, _config(initial)
            )
            sql = _SqlBreaker(conn, f"k{next(keys)}")
            sql.configure(initial)
            generations = _Generations([])
            at_ms = 0
            for index, (elapsed, op, arg) in enumerate(steps):
                at_ms += elapsed
                now[0] = EPOCH_NS + at_ms * MS
                moment = EPOCH + timedelta(milliseconds=at_ms)
                where = f"step {index}: {op} {arg} at {at_ms} ms"
                if op == "acquire":
                    expected: tuple[Any, ...] = model.acquire(at_ms)
                    adm = memory.acquire()
                    wait = None if adm.retry_after is None else adm.retry_after // MS
                    got = (adm.permitted, adm.state.value, adm.generation, wait)
                    assert got == expected, f"memory, {where}"
                    assert sql.acquire(moment) == expected, f"sql, {where}"
                    if expected[0]:
                        generations.admitted.append(expected[2])
                    continue
                if op == "record":
                    success, how = arg
                    generation = generations.pick(how, model)
                    expected = model.record(at_ms, success, generation)
                    reply = memory.record(success, generation)
                    assert sql.record(moment, success, generation) == expected, f"sql, {where}"
                elif op == "force":
                    expected = model.force(at_ms, arg)
                    reply = memory.force(CircuitState[arg])
                    assert sql.force(moment, arg) == expected, f"sql, {where}"
                elif op == "reset":
                    expected = model.reset(at_ms)
                    reply = memory.reset()
                    assert sql.reset(moment) == expected, f"sql, {where}"
                else:
                    expected = model.configure(arg)
                    reply = memory.configure(_config(arg))
                    assert sql.configure(arg) == expected, f"sql, {where}"
                assert (reply.state.value, reply.generation) == expected, f"memory, {where}"
                state, config = sql.state()
                assert _memory_state(memory) == _model_state(model), f"memory, {where}"
                assert state == _model_state(model), f"sql, {where}"
                assert config == _normalised(model.config), f"sql config, {where}"

        run()


# ------------------------------------------------ the public API of both stores


class _Caller:
    """A policy and a breaker handle on one store, with the transitions the policy reports."""

    def __init__(self, storage: Any, key: str, ref: RefConfig) -> None:
        self.seen: list[tuple[str, str]] = []
        optional: dict[str, Any] = {}
        if ref.success_limit is not None:
            optional["success_limit"] = ref.success_limit
        self.policy = CircuitProtectorPolicy(
            resource_key=key,
            storage=storage,
            namespace=NAMESPACE,
            failure_limit=ref.failure_limit,
            window_size=ref.window_size,
            cooldown=timedelta(milliseconds=ref.cooldown_ms),
            half_open_timeout=timedelta(milliseconds=ref.half_open_timeout_ms),
            on_status_change=lambda _p, old, new: self.seen.append((old.value, new.value)),
            **optional,
        )
        self.breaker: Breaker = storage.breaker(key, NAMESPACE, self.policy.config)

    def outcome(self, ok: bool) -> str:
        """What a protected call did: "done", "failed" or "rejected"."""

        @self.policy
        def call() -> str:
            if not ok:
                raise _Failure
            return "done"

        try:
            return call()
        except _Failure:
            return "failed"
        except ProtectedCallError:
            return "rejected"

    def acquire(self) -> Admission:
        return self.breaker.acquire()

    def record(self, success: bool, generation: int | None) -> Observed:
        return self.breaker.record(success, generation)

    def force(self, target: CircuitState) -> None:
        self.policy.status = target

    def reset(self) -> None:
        self.policy.reset()

    def state(self) -> dict[str, Any]:
        return _view(self.policy.snapshot())


class _AsyncCaller(_Caller):
    """The same through the coroutine API: async calls, ``a``-methods of the handle."""

    def __init__(
        self, storage: Any, key: str, ref: RefConfig, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(storage, key, ref)
        self.loop = loop

    def outcome(self, ok: bool) -> str:
        @self.policy
        async def call() -> str:
            if not ok:
                raise _Failure
            return "done"

        try:
            return self.loop.run_until_complete(call())
        except _Failure:
            return "failed"
        except ProtectedCallError:
            return "rejected"

    def acquire(self) -> Admission:
        return self.loop.run_until_complete(self.breaker.aacquire())

    def record(self, success: bool, generation: int | None) -> Observed:
        return self.loop.run_until_complete(self.breaker.arecord(success, generation))

    def force(self, target: CircuitState) -> None:
        self.loop.run_until_complete(self.breaker.aforce(target))

    def reset(self) -> None:
        self.loop.run_until_complete(self.breaker.areset())

    def state(self) -> dict[str, Any]:
        seen = _view(self.loop.run_until_complete(self.breaker.asnapshot()))
        # The handle's admin calls bypass the policy: it learns of them when it looks.
        self.policy.snapshot()
        return seen


def _view(snap: Snapshot) -> dict[str, Any]:
    return {
        "state": snap.state.value,
        "generation": snap.generation,
        "window": snap.window,
        "failure_count": snap.failure_count,
        "open": snap.open_remaining is not None,
        "permits": snap.permits,
        "successes": snap.successes,
        "failures": snap.failures,
    }


class _Failure(Exception):
    """The protected function's own error."""


def _model_view(model: RefBreaker) -> dict[str, Any]:
    return {
        "state": model.state,
        "generation": model.generation,
        "window": tuple(model.window),
        "failure_count": model.failure_count,
        "open": model.open_until_ms is not None,
        "permits": len(model.permits_ms),
        "successes": model.successes,
        "failures": model.failures,
    }


def test_postgres_store_and_memory_store_follow_the_model_through_the_public_api(
    pg_dsn: str,
) -> None:
    """Policies and breaker handles on both stores, sync and async, act as the model does."""
    store = PostgresStorage(pg_dsn, namespace=NAMESPACE)
    # One event loop for every example, so that the store's async pool is opened once.
    loop = asyncio.new_event_loop()
    call_or_record = st.one_of(
        st.tuples(st.just("call"), st.booleans()),
        st.tuples(st.just("acquire"), st.none()),
        st.tuples(st.just("record"), st.tuples(st.booleans(), st.sampled_from(GENERATIONS))),
    )
    steps_strategy = st.lists(
        st.one_of(
            call_or_record,
            call_or_record,
            call_or_record,
            st.tuples(st.just("force"), st.sampled_from(STATES)),
            st.tuples(st.just("reset"), st.none()),
        ),
        max_size=30,
    )
    try:

        @settings(SETTINGS, max_examples=80)
        @given(ref_configs(timeless=True), steps_strategy)
        def run(initial: RefConfig, steps: list[tuple[str, Any]]) -> None:
            model = RefBreaker(initial)
            key = f"k{uuid.uuid4().hex}"
            # The memory store's clock stands still: with these configurations time
            # changes nothing, as it does not for the PostgreSQL store's real clock.
            stores = {
                "memory": _Caller(
                    InMemoryStorage(namespace=NAMESPACE, clock=lambda: EPOCH_NS), key, initial
                ),
                "postgres": _Caller(store, key, initial),
                "postgres async": _AsyncCaller(store, f"{key}-async", initial, loop),
            }
            generations = _Generations([])
            for index, (op, arg) in enumerate(steps):
                where = f"step {index}: {op} {arg}"
                del model.transitions[:]
                if op == "call":
                    permitted, *_ = model.acquire(0)
                    if permitted:
                        model.record(0, arg, model.generation)
                    expected: Any = ("done" if arg else "failed") if permitted else "rejected"
                    for name, caller in stores.items():
                        assert caller.outcome(arg) == expected, f"{name}, {where}"
                elif op == "acquire":
                    permitted, state, generation, wait = model.acquire(0)
                    if permitted:
                        generations.admitted.append(generation)
                    for name, caller in stores.items():
                        adm = caller.acquire()
                        got = (adm.permitted, adm.state.value, adm.generation)
                        assert got == (permitted, state, generation), f"{name}, {where}"
                        assert (adm.retry_after is None) == (wait is None), f"{name}, {where}"
                elif op == "record":
                    success, how = arg
                    generation = generations.pick(how, model)
                    expected = model.record(0, success, generation)
                    for name, caller in stores.items():
                        reply = caller.record(success, generation)
                        got = (reply.state.value, reply.generation)
                        assert got == expected, f"{name}, {where}"
                elif op == "force":
                    model.force(0, arg)
                    for caller in stores.values():
                        caller.force(CircuitState[arg])
                else:
                    model.reset(0)
                    for caller in stores.values():
                        caller.reset()
                moves = [(t.old, t.new) for t in model.transitions if t.old != t.new]
                for name, caller in stores.items():
                    assert caller.state() == _model_view(model), f"{name}, {where}"
                    assert caller.seen == moves, f"{name} on_status_change, {where}"
                    del caller.seen[:]

        run()
    finally:
        loop.run_until_complete(store.aclose())
        loop.close()
        store.close()
