"""The Python side against hostile input and bad luck: forged notifications, lost outcomes,
oversized settings, leaked passwords and terminal escapes (lone surrogates in names are
refused by every store: tests/contract/test_breaker.py).

Every role here is created by the test (``pg_role``) and logs in itself.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from click.testing import CliRunner

from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError, _installer
from resilient_circuit._dsn import Dsn
from resilient_circuit.cli import main as cli
from resilient_circuit.cli.connect import connect
from resilient_circuit.storage import InMemoryStorage, PostgresStorage
from tests._fleet_net import faulty_proxy
from tests._helpers import channel, db_counters, wait_for

if TYPE_CHECKING:
    from tests.conftest import PgRole

SECRET = "s3cr3t-Pa55"


class Boom(ConnectionError):
    """The protected function's own failure."""


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[Callable[..., PostgresStorage]]:
    """Stores closed after the test."""
    made: list[PostgresStorage] = []

    def make(dsn: str = pg_dsn, **kwargs: Any) -> PostgresStorage:
        store = PostgresStorage(dsn, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def app_dsn(pg_dsn: str, pg_role: Callable[[], PgRole]) -> str:
    """A DSN logging in as an application role set up by pg-setup (namespace 'default')."""
    role = pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=role)
    return role.dsn(pg_dsn)


# ------------------------------------------------------------- forged notifications


def _forge(pg_dsn: str, role: PgRole, key: str, old: str, new: str) -> None:
    """A role with nothing but CONNECT, told the channel, announces a transition never made."""
    payload = json.dumps(
        {"namespace": "default", "key": key, "from": old, "to": new, "generation": 999999999}
    )
    with psycopg.connect(role.dsn(pg_dsn), autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", [channel(pg_dsn, "default"), payload])


def _watched_policy(
    store: PostgresStorage, key: str
) -> tuple[CircuitProtectorPolicy, Callable[..., str], list[tuple[CircuitState, CircuitState]]]:
    changes: list[tuple[CircuitState, CircuitState]] = []
    policy = CircuitProtectorPolicy(
        resource_key=key,
        storage=store,
        cooldown=timedelta(hours=1),
        admission="cached",
        on_status_change=lambda _, old, new: changes.append((old, new)),
    )

    @policy
    def call(ok: bool = True) -> str:
        if not ok:
            raise Boom
        return "ran"

    return policy, call, changes


def _outcomes(call: Callable[..., str], seconds: float) -> tuple[int, int]:
    """(ran, rejected) for calls made during ``seconds``."""
    ran = rejected = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            call()
            ran += 1
        except ProtectedCallError:
            rejected += 1
        time.sleep(0.01)
    return ran, rejected


def test_a_forged_close_neither_admits_calls_nor_fires_callbacks(
    pg_dsn: str, app_dsn: str, pg_role: Callable[[], PgRole], stores: Callable[..., PostgresStorage]
) -> None:
    """An OPEN cached breaker stays OPEN after a forged OPEN -> CLOSED; real changes still land."""
    store = stores(app_dsn)
    _, call, changes = _watched_policy(store, "svc")
    with pytest.raises(Boom):
        call(False)
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert store.wait_listening()

    _forge(pg_dsn, pg_role(), "svc", "OPEN", "CLOSED")
    ran, rejected = _outcomes(call, 1.0)
    assert (ran, rejected > 0) == (0, True)
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]

    # A real transition still reaches the process, and fires the callback from a reply.
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        owner.execute("SELECT * FROM rc_force('svc', 'CLOSED')")
    assert wait_for(lambda: _outcomes(call, 0.05)[0] > 0)
    assert changes[1:] == [(CircuitState.OPEN, CircuitState.CLOSED)]
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        owner.execute("SELECT * FROM rc_force('svc', 'OPEN')")
    assert wait_for(lambda: _outcomes(call, 0.05)[0] == 0)
    assert changes[2:] == [(CircuitState.CLOSED, CircuitState.OPEN)]


def test_a_forged_trip_neither_rejects_calls_nor_fires_callbacks(
    pg_dsn: str, app_dsn: str, pg_role: Callable[[], PgRole], stores: Callable[..., PostgresStorage]
) -> None:
    """A CLOSED cached breaker keeps running calls after a forged CLOSED -> OPEN."""
    store = stores(app_dsn)
    _, call, changes = _watched_policy(store, "svc")
    assert call() == "ran"
    assert store.wait_listening()
    _forge(pg_dsn, pg_role(), "svc", "CLOSED", "OPEN")
    ran, rejected = _outcomes(call, 1.0)
    assert (ran > 0, rejected) == (True, 0)
    assert changes == []
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        owner.execute("SELECT * FROM rc_force('svc', 'OPEN')")
    assert wait_for(lambda: _outcomes(call, 0.05)[0] == 0)
    assert changes == [(CircuitState.CLOSED, CircuitState.OPEN)]


# ------------------------------------------------------------------ batched outcomes


def test_a_huge_batch_at_the_largest_window_lands_within_the_statement_timeout(
    pg_dsn: str, stores: Callable[..., PostgresStorage]
) -> None:
    """200,000 queued outcomes at window 10000 are flushed whole, with no outage."""
    store = stores(statement_timeout=1.0, flush_interval=3600, max_queued=250_000)
    policy = CircuitProtectorPolicy(
        resource_key="hot",
        storage=store,
        failure_limit=Fraction(1, 2),
        window_size=10_000,
        admission="cached",
        recording="batched",
    )
    assert store.wait_listening()

    @policy
    def call() -> None:
        pass

    call()
    for _ in range(200_000):
        call()
    store.flush()
    assert store.outage.down_since is None
    assert db_counters(pg_dsn, "hot", "default") == (200_001, 0)


def test_outcomes_shed_in_a_long_outage_are_logged_and_counted(
    pg_dsn: str, stores: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """Past max_queued once a flush has failed, the oldest outcomes go, with a WARNING and
    a counter (while the database answers, the caller past max_queued flushes instead)."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    with faulty_proxy(pg_dsn) as proxy:
        store = stores(proxy.dsn(), flush_interval=3600, max_queued=1000)
        policy = CircuitProtectorPolicy(
            resource_key="shed", storage=store, admission="cached", recording="batched"
        )
        assert store.wait_listening()

        @policy
        def call() -> None:
            pass

        for _ in range(500):
            call()
        breaker = store.breakers()[0]
        generation = breaker.last_known.generation
        proxy.set_mode("refuse")
        proxy.drop()
        store.flush()  # fails: everything is kept
        assert store.outage.down_since is not None
        assert store.dropped_outcomes == 0
        # Calls admitted before the outage and ending in it: trimmed to 1000 as they come.
        for _ in range(1000):
            breaker.record(True, generation)
        store.flush()  # fails again, and tells of what was shed
        assert store.dropped_outcomes == 500
        assert any(
            "500" in r.getMessage() and "shed" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        ), [r.getMessage() for r in caplog.records]
        proxy.set_mode("forward")
        store.close()
    assert db_counters(pg_dsn, "shed", "default") == (1000, 0)


def test_close_writes_the_queue_even_during_an_outage_backoff(
    pg_dsn: str, stores: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """A flush that failed once leaves a backoff; close() still makes its last attempt."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    with faulty_proxy(pg_dsn) as proxy:
        store = stores(proxy.dsn(), flush_interval=3600)
        policy = CircuitProtectorPolicy(
            resource_key="closing", storage=store, admission="cached", recording="batched"
        )
        assert store.wait_listening()

        @policy
        def call() -> None:
            pass

        for _ in range(6000):
            call()
        # Every connection dies and new ones are refused, so the flush fails (a pooled
        # connection ended while idle would just be replaced); then the server is back.
        proxy.set_mode("refuse")
        proxy.drop()
        store.flush()
        assert store.outage.down_since is not None  # now backing off
        proxy.set_mode("forward")
        store.close()
    assert db_counters(pg_dsn, "closing", "default") == (6000, 0)
    assert not [r for r in caplog.records if "could not" in r.getMessage()]


def test_close_reports_what_it_could_not_write(
    pg_dsn: str, stores: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """With the database gone for good, close() logs how many outcomes were lost."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    with faulty_proxy(pg_dsn) as proxy:
        store = stores(proxy.dsn(), flush_interval=3600, connect_timeout=0.5)
        policy = CircuitProtectorPolicy(
            resource_key="lost", storage=store, admission="cached", recording="batched"
        )
        assert store.wait_listening()

        @policy
        def call() -> None:
            pass

        for _ in range(300):
            call()
        proxy.set_mode("refuse")
        proxy.drop()
        store.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("300" in line and "lost" in line for line in lines), lines


# ------------------------------------------------------------ the caller's exception


def test_durations_beyond_the_bounds_are_refused_at_construction() -> None:
    """cooldown=timedelta.max and its kin raise ValueError naming the parameter."""
    for name, value in [
        ("cooldown", timedelta.max),
        ("cooldown", timedelta(days=366)),
        ("half_open_timeout", timedelta.max),
        ("half_open_timeout", float("inf")),
        ("cooldown", float("nan")),
    ]:
        with pytest.raises(ValueError, match=f"`{name}` must be"):
            CircuitProtectorPolicy(storage=InMemoryStorage(), **{name: value})


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_database_error_never_replaces_the_callers_exception(
    pg_dsn: str,
    stores: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
    asynchronous: bool,
) -> None:
    """When recording fails with an unexpected error, the caller still gets its own."""
    caplog.set_level(logging.ERROR, logger="resilient_circuit")
    store = stores()
    policy = CircuitProtectorPolicy(resource_key="trap", storage=store, cooldown=timedelta(1))
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        owner.execute(
            """
            CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'trapped' USING ERRCODE = 'data_exception'; END $$;
            CREATE TRIGGER trap BEFORE UPDATE ON rc_circuit_breakers
                FOR EACH ROW EXECUTE FUNCTION trap();
            """
        )
    mine = Boom("mine")

    def fail() -> None:
        raise mine

    async def afail() -> None:
        raise mine

    async def aok() -> str:
        return "ok"

    if asynchronous:
        import asyncio

        async def both() -> str:
            with pytest.raises(Boom) as caught:
                await policy(afail)()
            assert caught.value is mine
            result: str = await policy(aok)()
            await store.aclose()
            return result

        assert asyncio.run(both()) == "ok"
    else:
        with pytest.raises(Boom) as caught:
            policy(fail)()
        assert caught.value is mine
        assert policy(lambda: "ok")() == "ok"
    assert any("trap" in r.getMessage() for r in caplog.records), caplog.records


# -------------------------------------------------------------------------- secrets


BAD_DSNS = [
    f"postgresql://app:{SECRET}@[::1/db",
    f"postgresql://app:{SECRET}@localhost/db?x y",
    f"postgresql://app:{SECRET}@localhost/db?nonsense=1",
]


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_a_malformed_dsn_is_refused_at_construction_without_its_password(dsn: str) -> None:
    """PostgresStorage checks the DSN at once; the error names `dsn` and hides the password."""
    with pytest.raises(ValueError, match="`dsn`") as caught:
        PostgresStorage(dsn)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "user=test password=test dbname=test_db host=h",
            "user=test password=******** dbname=test_db host=h",
        ),
        ("postgresql://test:test@h/test", "postgresql://test:********@h/test"),
        ("host=h password = 'it\\'s' user=it", "host=h password = ******** user=it"),
        # The passphrase of the client certificate's key is a secret too.
        ("host=h sslpassword=keysecret user=u", "host=h sslpassword=******** user=u"),
        ("postgresql://u@h/d?sslpassword=keysecret", "postgresql://u@h/d?sslpassword=********"),
        (
            "postgresql://u:pw@h/d?sslpassword=keysecret",
            "postgresql://u:********@h/d?sslpassword=********",
        ),
    ],
)
def test_the_shown_dsn_masks_the_password_and_nothing_else(dsn: str, shown: str) -> None:
    """A user or database name that contains the password's text is shown as it is."""
    assert Dsn(dsn).shown == shown
    assert shown in repr(PostgresStorage(dsn))


@pytest.mark.parametrize("dsn", BAD_DSNS)
@pytest.mark.parametrize("command", [["pg-setup", "--yes"], ["watch", "--timeout", "1"]])
def test_the_cli_never_prints_a_password(dsn: str, command: list[str]) -> None:
    """pg-setup and watch reject a malformed DSN without echoing its password."""
    result = CliRunner().invoke(cli, [*command, "--dsn", dsn])
    assert result.exit_code != 0
    assert SECRET not in result.output
    assert SECRET not in (result.stderr or "")


def test_no_log_line_or_repr_shows_the_password(
    stores: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable store logs its outage, and the pool its retries, without the password."""
    caplog.set_level(logging.DEBUG)
    store = stores(f"postgresql://app:{SECRET}@127.0.0.1:1/db", connect_timeout=0.3)
    policy = CircuitProtectorPolicy(resource_key="k", storage=store)
    assert policy(lambda: "ran")() == "ran"  # the outage lets it through
    time.sleep(0.5)  # the pool retries in the background meanwhile
    # What the pool would print if libpq ever echoed the connection string.
    logging.getLogger("psycopg.pool").warning(
        "error connecting in %r: %s", "pool", f"bad URI postgresql://app:{SECRET}@x"
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("unavailable" in m for m in messages), messages
    assert all(SECRET not in m for m in messages), messages
    assert SECRET not in repr(store)
    assert SECRET not in str(store.dsn)


# ------------------------------------------------------------------- smaller things


def test_a_sub_millisecond_statement_timeout_rounds_up_not_to_zero(
    stores: Callable[..., PostgresStorage],
) -> None:
    """statement_timeout=0.0004 becomes 1 ms on the server, never 0 (no timeout at all)."""
    store = stores(statement_timeout=0.0004)
    rows: list[Any] = []

    def read_settings() -> bool:
        # The read runs under that very millisecond: a loaded machine can outrun it, and
        # a cancelled read (itself proof that some timeout is set) is made again.
        try:
            with store.pool().connection() as conn:
                rows.append(
                    conn.execute(
                        "SELECT current_setting('statement_timeout'),"
                        " current_setting('lock_timeout')"
                    ).fetchone()
                )
        except psycopg.errors.QueryCanceled:
            return False
        return True

    assert wait_for(read_settings, timeout=60)
    assert rows == [("1ms", "1ms")]


def test_watch_prints_no_terminal_control_characters(pg_dsn: str) -> None:
    """A key holding escape sequences is shown escaped by resilient-circuit-cli watch."""
    key = "evil\x1b]0;owned\x07\x1b[2J\r\nkey\u202e"
    command = [
        str(Path(sys.executable).with_name("resilient-circuit-cli")),
        "watch",
        "--dsn",
        pg_dsn,
    ]
    with subprocess.Popen(
        [*command, "--count", "1", "--timeout", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    ) as watcher:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT * FROM rc_configure(%s)", [key])
            while watcher.poll() is None:
                conn.execute("SELECT * FROM rc_force(%s, 'OPEN')", [key])
                time.sleep(0.3)
        out, err = watcher.communicate()
    assert watcher.returncode == 0, err
    text = out.decode()
    assert "evil" in text
    assert "key" in text
    assert not any(ch in text.rstrip("\n") for ch in "\x1b\x07\r\u202e"), repr(text)
    assert text.count("\n") == 1, repr(text)


# -------------------------------------------------------------- deleted while in use


@pytest.mark.parametrize("admission", ["strict", "cached"])
@pytest.mark.parametrize("deletion", ["gc", "forget"])
def test_a_breaker_deleted_while_in_use_keeps_protecting_with_its_configuration(
    pg_dsn: str, stores: Callable[..., PostgresStorage], admission: str, deletion: str
) -> None:
    """After rc_gc or rc_forget, a running policy's outcomes count and its configuration returns."""
    store = stores()
    policy = CircuitProtectorPolicy(
        resource_key="reused",
        storage=store,
        failure_limit=Fraction(1, 2),
        cooldown=timedelta(hours=1),
        admission=admission,  # type: ignore[arg-type]
    )
    if admission == "cached":
        assert store.wait_listening()

    @policy
    def call(ok: bool) -> None:
        if not ok:
            raise Boom

    call(True)
    policy.status = CircuitState.OPEN
    policy.reset()  # CLOSED again, at generation 2
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        if deletion == "gc":
            assert owner.execute("SELECT rc_gc('0 seconds')").fetchone() == (1,)
        else:
            assert owner.execute("SELECT rc_forget('reused')").fetchone() == (True,)
    for _ in range(6):
        try:
            call(False)
        except Boom:
            pass
        except ProtectedCallError:
            break
    else:
        pytest.fail("the breaker never opened after its row was deleted")
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        row = owner.execute(
            "SELECT state, failure_limit_num, failure_limit_den, window_size, cooldown"
            " FROM rc_circuit_breakers WHERE resource_key = 'reused'"
        ).fetchone()
    assert row == ("OPEN", 1, 2, 2, timedelta(hours=1))


def test_storage_and_cli_forget_and_gc(pg_dsn: str, stores: Callable[..., PostgresStorage]) -> None:
    """forget/gc on PostgresStorage and as commands delete what they say, and check idle."""
    store = stores()
    for key in ("a", "b", "c"):
        CircuitProtectorPolicy(resource_key=key, storage=store)(lambda: None)()
    assert store.forget("a") is True
    assert store.forget("a") is False
    with pytest.raises(ValueError, match="`idle`"):
        store.gc(timedelta(days=3651))
    with pytest.raises(ValueError, match="`idle`"):
        store.gc(timedelta(seconds=-1))
    assert store.gc(timedelta(hours=1)) == 0

    forgot = CliRunner().invoke(cli, ["forget", "b", "--dsn", pg_dsn])
    assert forgot.exit_code == 0, forgot.output
    assert "Forgot default/b." in forgot.output
    missing = CliRunner().invoke(cli, ["forget", "b", "--dsn", pg_dsn])
    assert missing.exit_code == 1
    assert "no breaker default/b" in missing.output
    refused = CliRunner().invoke(cli, ["gc", "--idle", "1 mon", "--dsn", pg_dsn])
    assert refused.exit_code == 1
    assert "--idle" in refused.output
    collected = CliRunner().invoke(cli, ["gc", "--idle", "0 seconds", "--dsn", pg_dsn])
    assert collected.exit_code == 0, collected.output
    assert "Deleted 1 CLOSED breaker(s)" in collected.output
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT resource_key FROM rc_circuit_breakers").fetchall()
    assert left == []
