"""A store that cannot connect says why: the server's refusal, not only a pool timeout.

A closed port makes every connection attempt of the store's pools fail at once; the
caller then waits for the pool's timeout, and its StorageError and the outage WARNING
name what the last attempt was told. A wrong database name or an unknown role is no
outage: the server refused the store as configured, and every call raises
StorageNotUsable or StorageAccessDenied before its function runs, at once, until a
probe connects. No message names the password of the DSN.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from resilient_circuit import (
    CircuitProtectorPolicy,
    StorageAccessDenied,
    StorageNotUsable,
    _installer,
)
from resilient_circuit.instrumentation import StorageOutageStarted, add_hook, remove_hook
from resilient_circuit.storage import PostgresStorage, StorageError, create_storage

from ._helpers import clear_database_settings, db_counters, forget_shared_storages, wait_for

NAMESPACE = "connect_failures"
# Short: every attempt fails at once, the pool's timeout is all a call waits for.
CONNECT_TIMEOUT = 1.0


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def missing_database(admin_dsn: str) -> tuple[str, str]:
    name = f"rc_missing_{uuid.uuid4().hex}"
    return make_conninfo(admin_dsn, dbname=name), f'database "{name}" does not exist'


def missing_role(admin_dsn: str) -> tuple[str, str]:
    role = f"rc_nobody_{uuid.uuid4().hex}"
    return make_conninfo(admin_dsn, user=role), f'role "{role}" does not exist'


def refused_port(admin_dsn: str) -> tuple[str, str]:
    return make_conninfo(admin_dsn, host="127.0.0.1", port=closed_port()), "Connection refused"


def as_the_server_answers(dsn: str, reason: str) -> str:
    """``reason``, unless the server asks for a password it then refuses: a server with
    password authentication says that before it looks at the role or the database."""
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        refused = re.search(r'password authentication failed for user "[^"]*"', str(exc))
        if refused is not None:
            return refused.group(0)
    return reason


def refusal_for(reason: str) -> type[StorageNotUsable]:
    """What a refused store raises for ``reason``: a password refused comes first."""
    if "password" in reason or "role" in reason:
        return StorageAccessDenied
    return StorageNotUsable


# Outages: the server is not there (or not answering).
CASES = {"refused port": refused_port}
# Deployment mistakes: the server answers and refuses the store as configured.
REFUSALS = {"missing database": missing_database, "missing role": missing_role}


@pytest.fixture
def make_store() -> Iterator[Callable[..., PostgresStorage]]:
    """Stores closed after the test."""
    made: list[PostgresStorage] = []

    def make(dsn: str, **kwargs: Any) -> PostgresStorage:
        kwargs.setdefault("namespace", NAMESPACE)
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        store = PostgresStorage(dsn, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "resilient_circuit.storage" and record.levelno == logging.WARNING
    ]


def storage_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """The store's own log records (not psycopg's), as (level, message)."""
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == "resilient_circuit.storage"
    ]


def requests(pool: Any) -> int:
    """How many times a connection was asked of ``pool``."""
    asked: int = pool.get_stats().get("requests_num", 0)
    return asked


def everything_said(caplog: pytest.LogCaptureFixture, exc: BaseException) -> str:
    """Every log line of the test and the whole traceback of ``exc``, causes included."""
    lines = [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records]
    return "\n".join([*lines, *traceback.format_exception(exc)])


async def afetch_status(store: PostgresStorage) -> Any:
    """One async round trip (the coroutine twin of ``check``)."""
    params = {"key": "-", "namespace": store.namespace}
    return await store.afetch(None, store.statements.status, params, missing_ok=True)


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_sync_call_names_why_no_connection_was_made(
    case: Callable[[str], tuple[str, str]],
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync call's StorageError, the outage WARNING and the outage event say what the
    server or libpq said."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    dsn, reason = case(pg_admin_dsn)
    reason = as_the_server_answers(dsn, reason)
    store = make_store(dsn)
    events: list[object] = []
    add_hook(events.append)
    try:
        with pytest.raises(StorageError) as raised:
            store.check()
    finally:
        remove_hook(events.append)
    started = [e for e in events if isinstance(e, StorageOutageStarted)]
    assert [e.error for e in started] == [
        f"{reason} (no connection within {CONNECT_TIMEOUT:.2f} s)"
    ], started
    message = str(raised.value)
    assert message.startswith(f"breaker storage unavailable: {reason}"), message
    assert f"(no connection within {CONNECT_TIMEOUT:.2f} s)" in message, message
    assert "PoolTimeout" not in message
    warnings = outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(f"{reason} (no connection within {CONNECT_TIMEOUT:.2f} s)")


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_async_call_names_why_no_connection_was_made(
    case: Callable[[str], tuple[str, str]],
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The coroutine twin: an event loop's pool remembers its last failed attempt too."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    dsn, reason = case(pg_admin_dsn)
    reason = as_the_server_answers(dsn, reason)
    store = make_store(dsn)
    try:
        with pytest.raises(StorageError) as raised:
            await afetch_status(store)
    finally:
        await store.aclose()
    message = str(raised.value)
    assert message.startswith(f"breaker storage unavailable: {reason}"), message
    assert f"(no connection within {CONNECT_TIMEOUT:.2f} s)" in message, message
    warnings = outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(f"{reason} (no connection within {CONNECT_TIMEOUT:.2f} s)")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A DSN to a port that takes TCP connections into its backlog and never answers (a
    hung host), with a libpq connect_timeout longer than any wait of the test."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        port = server.getsockname()[1]
        yield f"host=127.0.0.1 port={port} dbname=app user=app connect_timeout=60"
    finally:
        server.close()


SILENT = re.compile(
    r"the server has not answered a connection attempt begun \d+\.\d s ago "
    rf"\(no connection within {CONNECT_TIMEOUT:.2f} s\)$"
)


def test_sync_call_names_a_server_that_never_answers(
    silent_server: str, make_store: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """No attempt has failed yet when the caller stops waiting: it is told that the server
    has not answered, not a bare pool timeout."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    store = make_store(silent_server)
    with pytest.raises(StorageError) as raised:
        store.check()
    assert SILENT.search(str(raised.value)), str(raised.value)
    assert "PoolTimeout" not in str(raised.value)
    warnings = outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert SILENT.search(warnings[0]), warnings


async def test_async_call_names_a_server_that_never_answers(
    silent_server: str, make_store: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """The coroutine twin: an event loop's pool knows its attempts under way too."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    store = make_store(silent_server)
    try:
        with pytest.raises(StorageError) as raised:
            await afetch_status(store)
    finally:
        await store.aclose()
    assert SILENT.search(str(raised.value)), str(raised.value)
    warnings = outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert SILENT.search(warnings[0]), warnings


def test_strict_create_storage_names_the_missing_database(
    pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RC_DB_STRICT=1: create_storage raises StorageNotUsable saying the database does not
    exist."""
    clear_database_settings(monkeypatch)
    dsn, reason = missing_database(pg_admin_dsn)
    reason = as_the_server_answers(dsn, reason)
    monkeypatch.setenv("RC_DB_DSN", dsn)
    monkeypatch.setenv("RC_DB_STRICT", "1")
    try:
        with pytest.raises(refusal_for(reason), match=f"not usable: {reason}"):
            create_storage(NAMESPACE)
    finally:
        forget_shared_storages()


async def test_password_of_the_dsn_is_never_shown(
    pg_admin_dsn: str, make_store: Callable[..., PostgresStorage], caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the errors (with their causes) nor any log record show the DSN's password."""
    caplog.set_level(logging.DEBUG)
    password = f"pw-{uuid.uuid4().hex}"
    dsn, reason = missing_database(make_conninfo(pg_admin_dsn, password=password))
    reason = as_the_server_answers(dsn, reason)
    store = make_store(dsn)
    with pytest.raises(StorageNotUsable, match=reason) as sync_raised:
        store.check()
    try:
        # A new store: the first one's backoff would answer without connecting.
        astore = make_store(dsn)
        with pytest.raises(StorageNotUsable, match=reason) as async_raised:
            await afetch_status(astore)
    finally:
        await astore.aclose()
    for raised in (sync_raised, async_raised):
        said = everything_said(caplog, raised.value)
        assert reason in said
        assert password not in said


def test_a_connection_made_clears_the_failure_remembered(
    pg_admin_dsn: str, make_store: Callable[..., PostgresStorage]
) -> None:
    """Once the database exists, a later pool timeout (every connection lent) names no
    stale cause: the failure a pool remembers is cleared by a connection made."""
    dsn, reason = missing_database(pg_admin_dsn)
    store = make_store(dsn, max_connections=1)
    with pytest.raises(StorageNotUsable, match=reason):
        store.check()
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(dsn) as conn:
            _installer.install(conn)

        def answers() -> bool:
            try:
                store.check()
            except (StorageError, StorageNotUsable):
                return False
            return True

        assert wait_for(answers, timeout=10.0)
        pool = store.pool()
        held = pool.getconn()
        try:
            with pytest.raises(StorageError) as raised:
                store.check()
        finally:
            pool.putconn(held)
        assert "does not exist" not in str(raised.value)
        assert "PoolTimeout" in str(raised.value)
    finally:
        store.close()
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


KEY = "refused"


@pytest.mark.parametrize("case", REFUSALS.values(), ids=list(REFUSALS))
def test_sync_refused_store_raises_before_the_function_runs(
    case: Callable[[str], tuple[str, str]],
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A missing database or role raises StorageNotUsable (StorageAccessDenied for the role)
    on every call before the function runs, later calls without asking the pool; one
    ERROR, no outage."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    dsn, reason = case(pg_admin_dsn)
    reason = as_the_server_answers(dsn, reason)
    expected = refusal_for(reason)
    store = make_store(dsn)
    # No probe due during the test: every call after the first answers without the pool.
    store.outage.min_backoff = store.outage.max_backoff = 3600.0
    ran: list[int] = []
    protected = CircuitProtectorPolicy(resource_key=KEY, storage=store)(ran.append)
    events: list[object] = []
    add_hook(events.append)
    try:
        with pytest.raises(expected, match=f"not usable: {reason}"):
            protected(1)
        asked = requests(store.pool())
        for n in range(2, 6):
            with pytest.raises(expected, match=f"not usable: {reason}"):
                protected(n)
        assert requests(store.pool()) == asked
    finally:
        remove_hook(events.append)
    assert ran == []
    assert not [e for e in events if isinstance(e, StorageOutageStarted)], events
    said = storage_records(caplog)
    assert [level for level, _ in said] == ["ERROR"], said
    assert reason in said[0][1]
    assert "StorageError" not in said[0][1]


@pytest.mark.parametrize("case", REFUSALS.values(), ids=list(REFUSALS))
async def test_async_refused_store_raises_before_the_function_runs(
    case: Callable[[str], tuple[str, str]],
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The coroutine twin: an event loop's pool tells its waiting callers the refusal too."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    dsn, reason = case(pg_admin_dsn)
    reason = as_the_server_answers(dsn, reason)
    expected = refusal_for(reason)
    store = make_store(dsn)
    store.outage.min_backoff = store.outage.max_backoff = 3600.0
    ran: list[int] = []

    @CircuitProtectorPolicy(resource_key=KEY, storage=store)
    async def protected(n: int) -> None:
        ran.append(n)

    try:
        with pytest.raises(expected, match=f"not usable: {reason}"):
            await protected(1)
        asked = requests(await store.apool())
        for n in range(2, 6):
            with pytest.raises(expected, match=f"not usable: {reason}"):
                await protected(n)
        assert requests(await store.apool()) == asked
    finally:
        await store.aclose()
    assert ran == []
    said = storage_records(caplog)
    assert [level for level, _ in said] == ["ERROR"], said
    assert reason in said[0][1]


@pytest.fixture
def missing_then_created(pg_admin_dsn: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A DSN to a database that does not exist, and what creates it (set up); dropped
    after the test."""
    dsn, _ = missing_database(pg_admin_dsn)
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]

    def create() -> None:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(dsn) as conn:
            _installer.install(conn)

    yield dsn, create
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_created_database_is_used_without_a_restart(
    missing_then_created: tuple[str, Callable[[], None]],
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the missing database is created and set up, the same store's calls go through
    its shared breaker; one INFO says the store is usable again."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    dsn, create = missing_then_created
    store = make_store(dsn)
    ran: list[int] = []
    protected = CircuitProtectorPolicy(resource_key=KEY, storage=store)(ran.append)
    with pytest.raises(StorageNotUsable):
        protected(0)
    create()

    def goes_through() -> bool:
        try:
            protected(1)
        except StorageNotUsable:
            return False
        return True

    assert wait_for(goes_through, timeout=15.0)
    protected(2)
    assert ran == [1, 2]
    assert db_counters(dsn, KEY, NAMESPACE) == (2, 0)
    said = storage_records(caplog)
    assert [level for level, _ in said] == ["ERROR", "INFO"], said
    assert "usable again" in said[1][1]


async def test_async_created_database_is_used_without_a_restart(
    missing_then_created: tuple[str, Callable[[], None]],
    make_store: Callable[..., PostgresStorage],
) -> None:
    """The coroutine twin: the event loop's pool connects once the database exists."""
    dsn, create = missing_then_created
    store = make_store(dsn)
    ran: list[int] = []

    @CircuitProtectorPolicy(resource_key=KEY, storage=store)
    async def protected(n: int) -> None:
        ran.append(n)

    try:
        with pytest.raises(StorageNotUsable):
            await protected(0)
        create()
        deadline = asyncio.get_running_loop().time() + 15.0
        while True:
            try:
                await protected(1)
                break
            except StorageNotUsable:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
    finally:
        await store.aclose()
    assert ran == [1]
    assert db_counters(dsn, KEY, NAMESPACE) == (1, 0)


def test_database_dropped_under_a_batched_store_keeps_its_outcomes(
    missing_then_created: tuple[str, Callable[[], None]],
    pg_admin_dsn: str,
    make_store: Callable[..., PostgresStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database dropped under a working store: its calls raise StorageNotUsable, and a
    flush keeps the queued outcomes (no batch lost, nothing logged per flush)."""
    caplog.set_level(logging.INFO, logger="resilient_circuit")
    dsn, create = missing_then_created
    create()
    store = make_store(dsn, flush_interval=3600)
    policy = CircuitProtectorPolicy(resource_key=KEY, storage=store, recording="batched")
    protected = policy(lambda: None)
    for _ in range(5):
        protected()
    queued = store.breakers()[0].queued
    assert queued > 0
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def refused() -> bool:
        try:
            protected()
        except StorageNotUsable:
            return True
        return False

    assert wait_for(refused, timeout=15.0)
    for _ in range(3):
        store.flush()
    assert store.breakers()[0].queued >= queued
    said = storage_records(caplog)
    assert [level for level, _ in said if level == "ERROR"] == ["ERROR"], said
    assert not [r for r in caplog.records if r.exc_info], said
