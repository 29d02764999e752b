"""OPEN verdicts held locally on a real PostgreSQL: no round trip from the first one, in
every mode, and still revoked at once by a peer's force CLOSED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError, _installer
from resilient_circuit.cli.connect import connect
from resilient_circuit.instrumentation.hooks import CallRejected, Event
from resilient_circuit.storage import PostgresStorage
from resilient_circuit.storage.postgres.breaker import UNHEARD_OPEN_HOLD_NS, PgBreaker

from ._helpers import channel, wait_for

NAMESPACE = "open"
COOLDOWN = timedelta(hours=1)
# Every way a policy can talk to the store: each gets a store (a process) of its own,
# so that no other breaker has started its LISTEN connection beforehand.
MODES: dict[str, dict[str, str]] = {
    "strict": {},
    "cached": {"admission": "cached"},
    "batched": {"recording": "batched"},
}


class Failed(Exception):
    pass


@pytest.fixture
def make_store(pg_dsn: str) -> Iterator[Callable[..., PostgresStorage]]:
    made: list[PostgresStorage] = []

    def make(**kwargs: Any) -> PostgresStorage:
        store = PostgresStorage(kwargs.pop("dsn", pg_dsn), namespace=NAMESPACE, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def count_round_trips(monkeypatch: pytest.MonkeyPatch, store: PostgresStorage) -> list[Any]:
    """Every statement a call sends through ``store`` from now on, sync or async."""
    sent: list[Any] = []
    real_fetch, real_afetch = store.fetch, store.afetch

    def fetch(breaker: Any, statement: Any, params: Any, **kw: Any) -> Any:
        sent.append(params)
        return real_fetch(breaker, statement, params, **kw)

    async def afetch(breaker: Any, statement: Any, params: Any, **kw: Any) -> Any:
        sent.append(params)
        return await real_afetch(breaker, statement, params, **kw)

    monkeypatch.setattr(store, "fetch", fetch)
    monkeypatch.setattr(store, "afetch", afetch)
    return sent


def policy_on(store: PostgresStorage, key: str = "svc", **modes: Any) -> CircuitProtectorPolicy:
    return CircuitProtectorPolicy(resource_key=key, storage=store, cooldown=COOLDOWN, **modes)


def sync_call(policy: CircuitProtectorPolicy) -> Callable[[bool], str | None]:
    """``run(ok)``: the call's result, or None when the breaker rejected it."""

    @policy
    def call(ok: bool) -> str:
        if not ok:
            raise Failed
        return "ok"

    def run(ok: bool) -> str | None:
        try:
            return call(ok)
        except ProtectedCallError:
            return None

    return run


def async_call(policy: CircuitProtectorPolicy) -> Callable[[bool], str | None]:
    """``sync_call`` through an ``async def`` function, each call on a fresh event loop."""

    @policy
    async def call(ok: bool) -> str:
        await asyncio.sleep(0)
        if not ok:
            raise Failed
        return "ok"

    async def run(ok: bool) -> str | None:
        try:
            return await call(ok)
        except ProtectedCallError:
            return None

    return lambda ok: asyncio.run(run(ok))


APIS = {"sync": sync_call, "async": async_call}


def trip(store: PostgresStorage, run: Callable[[bool], str | None]) -> None:
    with pytest.raises(Failed):
        run(False)
    store.flush()  # a batched failure trips the breaker when it is sent


@pytest.mark.parametrize("api", APIS)
def test_no_round_trip_while_open_from_the_first_verdict(
    make_store: Callable[..., PostgresStorage], monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    """After the call that brings the OPEN verdict, rejections never ask the server again.

    That first verdict arrives before the LISTEN connection that could revoke it is up;
    once it is, the verdict is read again and held for the whole cooldown, beyond the
    second a verdict nobody can revoke is held.
    """
    runs = {}
    for mode, kwargs in MODES.items():
        store = make_store()
        runs[mode] = (store, APIS[api](policy_on(store, mode, **kwargs)))
        trip(store, runs[mode][1])
    sent = {mode: count_round_trips(monkeypatch, store) for mode, (store, _) in runs.items()}
    for _, run in runs.values():
        assert run(True) is None  # the first verdict: one round trip
    assert {mode: len(s) for mode, s in sent.items()} == dict.fromkeys(MODES, 1)
    for store, _ in runs.values():
        assert store.wait_listening()
    time.sleep(UNHEARD_OPEN_HOLD_NS / 1e9 + 0.1)
    for _ in range(50):
        for _, run in runs.values():
            assert run(True) is None
    assert {mode: len(s) for mode, s in sent.items()} == dict.fromkeys(MODES, 1)


@pytest.mark.parametrize("api", APIS)
def test_a_peer_forcing_closed_before_listen_is_up_is_obeyed_once_it_is(
    make_store: Callable[..., PostgresStorage],
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    api: str,
) -> None:
    """A force CLOSED between the first OPEN verdict and LISTEN is not missed.

    No notification can tell of it, since nothing listened yet: the verdict is read
    again as soon as LISTEN is up, so the next call runs, without waiting for the
    second an unheard verdict may be held.
    """
    store = make_store()
    listen = store.listen
    monkeypatch.setattr(store, "listen", lambda: None)  # LISTEN waits until told
    events: list[tuple[CircuitState, CircuitState]] = []
    policy = CircuitProtectorPolicy(
        resource_key="svc",
        storage=store,
        cooldown=COOLDOWN,
        on_status_change=lambda p, old, new: events.append((old, new)),
    )
    run = APIS[api](policy)
    trip(store, run)
    assert run(True) is None  # the first OPEN verdict, held while nothing listens
    assert not store.listening()
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        peer.execute("SELECT * FROM rc_force('svc', 'CLOSED', %s)", (NAMESPACE,))
    listen()
    assert store.wait_listening()
    assert run(True) == "ok"
    assert events == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]


@pytest.mark.parametrize("api", APIS)
def test_a_forged_notification_neither_opens_nor_closes(
    make_store: Callable[..., PostgresStorage], pg_dsn: str, api: str
) -> None:
    """A payload claiming CLOSED only makes the holder ask; the server's OPEN stands."""
    store = make_store()
    run = APIS[api](policy_on(store))
    store.listen()
    assert store.wait_listening()
    trip(store, run)
    assert run(True) is None
    breaker = store.breakers()[0]
    forged = (
        '{"namespace": "open", "key": "svc", "from": "OPEN", "to": "CLOSED",'
        ' "generation": 99, "open_until": null}'
    )
    with psycopg.connect(pg_dsn, autocommit=True) as forger:
        forger.execute("SELECT pg_notify(%s, %s)", (channel(pg_dsn, "open"), forged))
    assert wait_for(lambda: not breaker._open_deadline)  # type: ignore[attr-defined]
    assert run(True) is None
    assert breaker.last_known is not None
    assert breaker.last_known.state is CircuitState.OPEN


def test_losing_the_listen_connection_drops_held_open_verdicts(
    make_store: Callable[..., PostgresStorage],
    pg_dsn: str,
    pg_role: Callable[[], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With LISTEN gone, nothing could revoke a held verdict: the next call asks again."""
    listener = pg_role()
    with connect(pg_dsn) as conn:  # only a role granted the namespace may learn its channel
        _installer.install(conn, app_role=listener, namespaces=[NAMESPACE])
    store = make_store(listen_dsn=listener.dsn(pg_dsn))
    run = sync_call(policy_on(store))
    store.listen()
    assert store.wait_listening()
    trip(store, run)
    assert run(True) is None  # heard: held for the whole cooldown
    sent = count_round_trips(monkeypatch, store)
    assert run(True) is None
    assert sent == []
    role = sql.Identifier(str(listener))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        # No way back for the LISTEN connection: only its loss can drop the verdict.
        admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (str(listener),),
        )
    assert wait_for(lambda: run(True) is None and len(sent) > 0)
    assert not store.listening()


@pytest.mark.parametrize("mode", MODES)
def test_the_announcement_of_the_verdicts_own_trip_keeps_it(
    make_store: Callable[..., PostgresStorage], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """This process's own force OPEN, announced after the verdict, asks nothing new."""
    store = make_store()
    run = sync_call(policy_on(store, **MODES[mode]))
    heard: list[Any] = []
    store.subscribe(heard.append)  # runs once the breakers have handled the transition
    assert store.wait_listening()
    assert run(True) == "ok"
    # A batched success is sent by the flusher thread whenever it wakes: sent now, it
    # cannot land among the round trips counted below.
    store.flush()
    store.breakers()[0].force(CircuitState.OPEN)
    sent = count_round_trips(monkeypatch, store)
    assert run(True) is None
    assert wait_for(lambda: any(t.new is CircuitState.OPEN for t in heard))
    for _ in range(20):
        assert run(True) is None
    assert len(sent) == 1


# -- the standing rejection the decorator reads (Breaker.rejecting) ----------------------


def count_acquires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every acquire any PostgreSQL breaker answers from now on, sync or async."""
    called: list[str] = []
    real_acquire, real_aacquire = PgBreaker.acquire, PgBreaker.aacquire

    def acquire(self: PgBreaker) -> Any:
        called.append("acquire")
        return real_acquire(self)

    async def aacquire(self: PgBreaker) -> Any:
        called.append("aacquire")
        return await real_aacquire(self)

    monkeypatch.setattr(PgBreaker, "acquire", acquire)
    monkeypatch.setattr(PgBreaker, "aacquire", aacquire)
    return called


def held_open(store: PostgresStorage, run: Callable[[bool], str | None]) -> PgBreaker:
    """Trip the breaker and take the OPEN verdict, heard (LISTEN up): the one published."""
    store.listen()
    assert store.wait_listening()
    trip(store, run)
    assert run(True) is None
    breaker = store.breakers()[0]
    assert breaker.rejecting is not None
    return breaker


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
def test_rejections_while_open_do_not_call_acquire(
    make_store: Callable[..., PostgresStorage],
    monkeypatch: pytest.MonkeyPatch,
    api: str,
    mode: str,
) -> None:
    store = make_store()
    run = APIS[api](policy_on(store, **MODES[mode]))
    breaker = held_open(store, run)
    called = count_acquires(monkeypatch)
    sent = count_round_trips(monkeypatch, store)
    for _ in range(20):
        assert run(True) is None
    assert (called, sent) == ([], [])
    held = breaker.rejecting
    assert held is not None
    last = breaker.last_known
    assert last is not None
    # What acquire would answer: the newest reply's OPEN generation, the cooldown left.
    assert (held[2], held[3]) == (CircuitState.OPEN, last.generation)
    admission = breaker.acquire()
    assert (admission.state, admission.generation) == (held[2], held[3])
    assert admission.retry_after is not None
    assert 0 < held[4] - time.monotonic_ns() <= admission.retry_after


def test_a_verdict_held_unheard_is_published_for_a_second_at_most(
    make_store: Callable[..., PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    listen = store.listen
    monkeypatch.setattr(store, "listen", lambda: None)  # LISTEN waits until told
    run = sync_call(policy_on(store))
    trip(store, run)
    assert run(True) is None
    breaker = store.breakers()[0]
    held = breaker.rejecting
    assert held is not None
    assert held[0] - time.monotonic_ns() <= UNHEARD_OPEN_HOLD_NS
    listen()
    assert store.wait_listening()
    # Read again once LISTEN is up: published for the whole cooldown.
    assert wait_for(lambda: (h := breaker.rejecting) is not None and h[0] > held[0])


@pytest.mark.parametrize(
    "path",
    [
        "invalidate",
        "force_closed",
        "reset",
        "set_state",
        "forget",
        "start_afresh",
        "listen_lost",
        "close",
        "notification",
    ],
)
def test_every_invalidation_withdraws_the_standing_rejection(
    make_store: Callable[..., PostgresStorage], pg_dsn: str, path: str
) -> None:
    store = make_store()
    run = sync_call(policy_on(store))
    breaker = held_open(store, run)
    if path == "invalidate":
        breaker.invalidate()
    elif path == "force_closed":
        breaker.force(CircuitState.CLOSED)
    elif path == "reset":
        breaker.reset()
    elif path == "set_state":
        store.set_state("svc", "CLOSED", 0, 0.0)
    elif path == "forget":
        store.forget("svc")
    elif path == "start_afresh":
        store._start_afresh()  # what a forked child runs
    elif path == "listen_lost":
        store._listen_lost()
    elif path == "close":
        store.close()
    else:
        # Any announcement of another transition makes the holder ask again.
        payload = (
            '{"namespace": "open", "key": "svc", "from": "OPEN", "to": "CLOSED",'
            ' "generation": 99, "open_until": null}'
        )
        with psycopg.connect(pg_dsn, autocommit=True) as peer:
            peer.execute("SELECT pg_notify(%s, %s)", (channel(pg_dsn, "open"), payload))
        assert wait_for(lambda: breaker.rejecting is None)
    assert breaker.rejecting is None


@pytest.mark.parametrize("api", APIS)
def test_a_peer_forcing_closed_is_obeyed_through_the_standing_rejection(
    make_store: Callable[..., PostgresStorage], pg_dsn: str, api: str
) -> None:
    store = make_store()
    run = APIS[api](policy_on(store))
    breaker = held_open(store, run)
    with psycopg.connect(pg_dsn, autocommit=True) as peer:
        peer.execute("SELECT * FROM rc_force('svc', 'CLOSED', %s)", (NAMESPACE,))
    assert wait_for(lambda: breaker.rejecting is None)
    assert run(True) == "ok"


@pytest.mark.parametrize("api", APIS)
def test_a_policy_new_to_the_open_generation_hears_it(
    make_store: Callable[..., PostgresStorage], monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    """The verdict another policy's calls left is not used by a policy that has not seen
    its generation: acquire tells it (on_status_change)."""
    store = make_store()
    heard: list[tuple[CircuitState, CircuitState]] = []
    second = CircuitProtectorPolicy(
        resource_key="svc",
        storage=store,
        cooldown=COOLDOWN,
        on_status_change=lambda p, old, new: heard.append((old, new)),
    )
    run = APIS[api](second)
    breaker = held_open(store, APIS[api](policy_on(store)))
    called = count_acquires(monkeypatch)
    assert run(True) is None
    assert heard == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert len(called) == 1
    assert run(True) is None
    assert len(called) == 1
    assert breaker.rejecting is not None


def test_hooked_policies_see_every_rejection(
    make_store: Callable[..., PostgresStorage],
) -> None:
    store = make_store()
    seen: list[Event] = []
    policy = CircuitProtectorPolicy(
        resource_key="svc", storage=store, cooldown=COOLDOWN, hooks=[seen.append]
    )
    held_open(store, sync_call(policy))
    run = sync_call(policy)
    for _ in range(3):
        assert run(True) is None
    assert sum(isinstance(event, CallRejected) for event in seen) == 4
