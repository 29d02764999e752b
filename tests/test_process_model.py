"""How the library behaves in the shapes production processes take.

Forking servers and pools (policies built at import, workers forked after), imports
that must not connect, a database without the schema or without privileges, keys
that every process agrees on, configurations that disagree, and the connection
budget. Real processes, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg_pool import PoolTimeout

from resilient_circuit import (
    CircuitProtectorPolicy,
    ProtectedCallError,
    ProtectionException,
    SchemaNotReady,
    StorageAccessDenied,
    _installer,
)
from resilient_circuit.cli import main as cli
from resilient_circuit.storage import InMemoryStorage, PostgresStorage
from resilient_circuit.storage.postgres.outage import unavailable

ROOT = Path(__file__).resolve().parent.parent
APP_KEY = "tests._process_app.handle"


def app_env(dsn: str, **extra: str) -> dict[str, str]:
    """The environment of an application process using ``dsn``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RC_")}
    env.update(RC_DB_DSN=dsn, RC_NAMESPACE="default", **extra)
    return env


def run_scenario(name: str, dsn: str, **extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests._process_run", name],
        cwd=ROOT,
        env=app_env(dsn, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def breaker_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT resource_key, state, successes, failures FROM rc_circuit_breakers"
            " ORDER BY resource_key"
        ).fetchall()


# ---------------------------------------------------------------------------- forking


@pytest.mark.parametrize("admission", ["strict", "cached"])
def test_forked_children_reconnect_share_a_trip_and_leave_the_parent_working(
    pg_dsn: str, admission: str
) -> None:
    """os.fork() after the parent used its pool, LISTEN and flusher: children work, share a trip."""
    recording = "batched" if admission == "cached" else "immediate"
    result = run_scenario("fork", pg_dsn, APP_ADMISSION=admission, APP_RECORDING=recording)
    assert result["exit_codes"] == [0, 0, 0, 0]
    children = result["children"]
    assert len(children) == 4
    for child in children:
        assert child["calls"] == ["ok"] * 50, child
        assert child["logs"] == [], child
    assert children[0]["trip"] == "failed"
    polled = [child["saw_trip"] for child in children[1:]]
    assert all(seen[-1] == "rejected" and set(seen[:-1]) <= {"ok"} for seen in polled)
    parent = result["parent"]
    assert parent["before"] == ["ok"] * 5
    assert parent["after"] == ["rejected"] * 5
    assert parent["state"] == "OPEN"
    assert parent["logs"] == []
    # Every outcome of every process was recorded exactly once, on one shared row.
    [(key, state, successes, failures)] = breaker_rows(pg_dsn)
    assert (key, state) == (APP_KEY, "OPEN")
    assert (successes, failures) == (5 + 4 * 50 + sum(len(seen) - 1 for seen in polled), 1)


def test_a_fork_pool_maps_calls_without_deadlock(pg_dsn: str) -> None:
    """A multiprocessing pool (fork start method) forked after the parent called."""
    result = run_scenario("pool", pg_dsn)
    assert len(result["pids"]) >= 2
    assert result["calls"] == ["ok"] * 200
    assert result["logs"] == []
    assert result["parent"] == {"before": ["ok"] * 3, "after": ["ok"] * 3, "logs": []}
    [(key, state, successes, failures)] = breaker_rows(pg_dsn)
    assert (key, state, successes, failures) == (APP_KEY, "CLOSED", 206, 0)


_MEMORY_FORK = """
import json, os, sys, threading
from datetime import timedelta
from resilient_circuit import CircuitProtectorPolicy, CircuitState, ProtectedCallError
from resilient_circuit.storage import InMemoryStorage

store = InMemoryStorage()
policy = CircuitProtectorPolicy(resource_key="k", storage=store, cooldown=timedelta(hours=1))
call = policy(lambda: "ok")
call()
breaker = store.breaker("k", "default", policy._config)

def child(before_fork):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        seen = []
        for _ in range(2):
            try:
                seen.append(call())
            except ProtectedCallError:
                seen.append("rejected")
        policy.status = CircuitState.CLOSED  # takes the store's lock
        seen.append(call())
        os.write(write, json.dumps(seen).encode())
        os._exit(0)
    os.close(write)
    before_fork()
    with os.fdopen(read) as pipe:
        seen = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)
    return seen

# 1. Another thread of the parent holds the store's lock at the fork.
holding, release = threading.Event(), threading.Event()
def hold():
    with store._lock:
        holding.set()
        release.wait()
holder = threading.Thread(target=hold)
holder.start()
holding.wait()
held = child(release.set)
holder.join()

# 2. The parent forks while a transition to OPEN is half-made: the state swapped, the
# admission of the CLOSED state it replaced still published (as _commit leaves them
# between the two, for an instant).
policy.status = CircuitState.OPEN
store._lock.acquire()
admitting = breaker._admit_closed[1]
breaker.admitting = admitting
store._lock.release()
half = child(lambda: None)
print(json.dumps({"held": held, "half": half}))
"""


def test_a_child_forked_from_a_threaded_parent_uses_the_memory_store() -> None:
    """A lock another thread held at the fork, or a transition half-made, does not
    carry into the child: it neither hangs nor admits past an OPEN state."""
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_FORK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["held"] == ["ok", "ok", "ok"]
    assert result["half"] == ["rejected", "rejected", "ok"]


def _request(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall((line + "\n").encode())
        return conn.makefile().readline().strip()


def test_a_preforking_server_shares_one_breaker_between_its_workers(pg_dsn: str) -> None:
    """Policy built at import in the master, workers forked after: one breaker for all."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests._process_run", "prefork"],
        cwd=ROOT,
        env=app_env(pg_dsn),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdin is not None
        started = json.loads(server.stdout.readline())
        port = started["port"]
        served = [_request(port, "ok").split() for _ in range(40)]
        assert {outcome for outcome, _ in served} == {"ok"}
        assert len({pid for _, pid in served}) >= 2
        assert _request(port, "fail").split()[0] == "failed"
        after = [_request(port, "ok").split() for _ in range(40)]
        assert {outcome for outcome, _ in after} == {"rejected"}
        assert len({pid for _, pid in after}) >= 2
        logs = [json.loads(_request(port, "logs")) for _ in range(8)]
        assert all(lines == [] for lines in logs), logs
    finally:
        _out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    [(key, state, successes, failures)] = breaker_rows(pg_dsn)
    assert (key, state, successes, failures) == (APP_KEY, "OPEN", 40, 1)


# ---------------------------------------------------------------- no I/O at construction


@pytest.fixture
def silent() -> Iterator[tuple[str, socket.socket]]:
    """A DSN to a TCP port that accepts connections into its backlog and never answers."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = server.getsockname()[1]
    try:
        yield f"host=127.0.0.1 port={port} dbname=app user=app connect_timeout=5", server
    finally:
        server.close()


def connection_attempted(server: socket.socket) -> bool:
    """Whether anyone connected to ``server`` (a connection waits in its backlog)."""
    return bool(select.select([server], [], [], 0.2)[0])


def test_building_policies_and_stores_connects_to_nothing(
    silent: tuple[str, socket.socket],
) -> None:
    """Constructing stores, policies of every mode and decorators: no socket, no thread."""
    dsn, server = silent
    threads = threading.active_count()
    store = PostgresStorage(dsn)
    policies = [
        CircuitProtectorPolicy(
            resource_key=f"k-{admission}-{recording}",
            storage=store,
            admission=admission,
            recording=recording,
        )
        for admission in ("strict", "cached")
        for recording in ("immediate", "batched")
    ]
    for policy in policies:
        policy(lambda: None)
    anonymous = CircuitProtectorPolicy(storage=store)

    @anonymous
    def handler() -> None: ...

    assert threading.active_count() == threads
    assert not connection_attempted(server)
    store.close()


def test_importing_a_module_level_decorator_connects_to_nothing(
    silent: tuple[str, socket.socket], tmp_path: Path
) -> None:
    """A module whose policies are built at import, with PostgreSQL configured: free to import."""
    dsn, server = silent
    (tmp_path / "service_module.py").write_text(
        "from resilient_circuit import CircuitProtectorPolicy\n"
        "protector = CircuitProtectorPolicy(admission='cached', recording='batched')\n"
        "@protector\n"
        "def call():\n"
        "    return 1\n"
    )
    probe = "import threading; import service_module; print(threading.active_count())"
    env = app_env(dsn, PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
    assert not connection_attempted(server)


# ------------------------------------------------------------- schema, privileges, errors


def test_a_database_without_the_schema_raises_schema_not_ready_before_the_call(
    pg_empty_dsn: str,
) -> None:
    """No pg-setup: SchemaNotReady naming the command, the function never runs, no outage."""
    store = PostgresStorage(pg_empty_dsn)
    ran: list[int] = []
    protector = CircuitProtectorPolicy(resource_key="svc", storage=store)

    @protector
    def call() -> str:
        ran.append(1)
        return "ok"

    try:
        for _ in range(2):
            with pytest.raises(SchemaNotReady, match=r"resilient-circuit-cli pg-setup") as caught:
                call()
        assert isinstance(caught.value, ProtectionException)
        assert "not installed" in str(caught.value)
        assert ran == []
        assert store.outage.down_since is None
    finally:
        store.close()


async def test_async_calls_raise_schema_not_ready_too(pg_empty_dsn: str) -> None:
    """The coroutine path tells a missing schema from an outage the same way."""
    store = PostgresStorage(pg_empty_dsn)
    protector = CircuitProtectorPolicy(resource_key="svc", storage=store)

    @protector
    async def call() -> str:
        raise AssertionError("must not run")

    try:
        with pytest.raises(SchemaNotReady, match="pg-setup"):
            await call()
    finally:
        await store.aclose()
        store.close()


def test_schema_not_ready_is_exported_where_0_8_6_had_it() -> None:
    """exceptions.SchemaNotReady and the package root name the same ProtectionException."""
    import resilient_circuit
    from resilient_circuit import exceptions

    assert exceptions.SchemaNotReady is resilient_circuit.SchemaNotReady
    assert issubclass(exceptions.SchemaNotReady, ProtectionException)
    assert issubclass(exceptions.StorageAccessDenied, ProtectionException)


def test_auto_create_installs_on_first_use_once_under_concurrency(
    pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RC_DB_AUTO_CREATE=1: stores racing on an empty database install it once and all work."""
    monkeypatch.setenv("RC_DB_AUTO_CREATE", "1")
    stores = [PostgresStorage(pg_empty_dsn) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[str] = []
    errors: list[BaseException] = []

    def first_call(store: PostgresStorage) -> None:
        protector = CircuitProtectorPolicy(resource_key="svc", storage=store)
        barrier.wait()
        try:
            results.append(protector(lambda: "ok")())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_call, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert results == ["ok"] * 4
        with psycopg.connect(pg_empty_dsn, autocommit=True) as conn:
            versions = conn.execute("SELECT version FROM rc_schema_migrations").fetchall()
            successes = conn.execute("SELECT successes FROM rc_circuit_breakers").fetchall()
        assert len(versions) == len({v for (v,) in versions}) >= 2
        assert successes == [(4,)]
    finally:
        for store in stores:
            store.close()


def test_a_role_without_privileges_gets_a_clear_error_not_an_outage(
    pg_dsn: str, pg_role: Any
) -> None:
    """No EXECUTE grant: StorageAccessDenied naming pg-setup --app-role, before the call."""
    role = pg_role()
    store = PostgresStorage(role.dsn(pg_dsn))
    protector = CircuitProtectorPolicy(resource_key="svc", storage=store)
    try:
        with pytest.raises(StorageAccessDenied, match=rf"pg-setup .*--app-role {role}"):
            protector(lambda: pytest.fail("must not run"))()
        assert store.outage.down_since is None
    finally:
        store.close()


def test_an_unexpected_database_error_is_logged_never_an_outage_never_the_callers(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """rc_record failing on a bug: the call's result stands, one ERROR, other breakers work."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Stands for any bug: the third success of a breaker violates this constraint.
        conn.execute(
            "ALTER TABLE rc_circuit_breakers ADD CONSTRAINT two_successes CHECK (successes < 3)"
        )
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    store = PostgresStorage(pg_dsn)
    broken = CircuitProtectorPolicy(resource_key="broken", storage=store)
    healthy = CircuitProtectorPolicy(
        resource_key="healthy", storage=store, cooldown=timedelta(hours=1)
    )
    try:
        assert [broken(lambda: "ok")() for _ in range(5)] == ["ok"] * 5
        assert store.outage.down_since is None
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "not an outage" in errors[0].getMessage()
        assert "CheckViolation" in errors[0].getMessage()

        @healthy
        def fail() -> None:
            raise ValueError("own error")

        with pytest.raises(ValueError, match="own error"):
            fail()
        with pytest.raises(ProtectedCallError):
            fail()
    finally:
        store.close()


def test_an_oversized_fraction_is_a_value_error_not_a_database_error() -> None:
    """A limit whose terms overflow PostgreSQL's integer is refused by name, at once."""
    with pytest.raises(ValueError, match="failure_limit"):
        CircuitProtectorPolicy(failure_limit=Fraction(2**31, 2**31 + 1), window_size=10)


@pytest.mark.parametrize(
    ("sqlstate", "outage"),
    [
        ("08006", True),  # connection failure
        ("57P01", True),  # admin shutdown
        ("53300", True),  # too many connections
        ("57014", True),  # statement timeout
        ("55P03", True),  # lock timeout
        ("25006", True),  # read-only
        ("42883", False),  # undefined function
        ("42501", False),  # insufficient privilege
        ("40P01", False),  # deadlock
        ("40001", False),  # serialization failure
        ("22012", False),  # division by zero
    ],
)
def test_only_availability_errors_are_outages(sqlstate: str, outage: bool) -> None:
    """The §10 list, by SQLSTATE; timeouts of the pool and OS errors too."""
    error = psycopg.errors.lookup(sqlstate)("x")
    assert unavailable(error) is outage
    assert unavailable(PoolTimeout("x"))
    assert unavailable(ConnectionRefusedError())


# ---------------------------------------------------------------------------- pg-check


def pg_check(*args: str) -> Result:
    return CliRunner().invoke(cli, ["pg-check", *args])


def test_pg_check_exit_codes_for_a_readiness_probe(
    pg_dsn: str, pg_empty_dsn: str, pg_role: Any
) -> None:
    """0 ready, 1 not installed or no privilege, 2 unreachable, 3 admin functions missing."""
    ready = pg_check("--dsn", pg_dsn)
    assert ready.exit_code == 0, ready.output
    assert "ready" in ready.output

    empty = pg_check("--dsn", pg_empty_dsn)
    assert empty.exit_code == 1, empty.output
    assert "pg-setup" in empty.output

    role = pg_role()
    denied = pg_check("--dsn", role.dsn(pg_dsn))
    assert denied.exit_code == 1, denied.output
    assert f"--app-role {role}" in denied.output

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    unreachable = pg_check("--dsn", f"host=127.0.0.1 port={port} dbname=app connect_timeout=2")
    assert unreachable.exit_code == 2, unreachable.output

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP FUNCTION rc_reset(text, text)")
    incomplete = pg_check("--dsn", pg_dsn)
    assert incomplete.exit_code == 3, incomplete.output
    assert "rc_reset" in incomplete.output


def test_watch_refuses_a_database_without_the_schema(pg_empty_dsn: str) -> None:
    """watch on an uninstalled database exits 1 naming pg-setup instead of waiting silently."""
    result = CliRunner().invoke(cli, ["watch", "--dsn", pg_empty_dsn, "--timeout", "1"])
    assert result.exit_code == 1
    assert "pg-setup" in result.output


# ------------------------------------------------------------------------------- keys


def test_anonymous_policies_share_one_key_across_processes(pg_dsn: str) -> None:
    """The Quick Start shape in two processes: one row, named after the decorated function."""
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", "from tests._process_app import handle; handle()"],
            cwd=ROOT,
            env=app_env(pg_dsn),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert breaker_rows(pg_dsn) == [(APP_KEY, "CLOSED", 2, 0)]


def test_a_policy_decorating_several_functions_is_one_breaker_named_after_the_first() -> None:
    """One policy object is one breaker: every function it decorates shares it."""
    protector = CircuitProtectorPolicy(storage=InMemoryStorage(), cooldown=timedelta(hours=1))

    @protector
    def first() -> None:
        raise ValueError("down")

    @protector
    def second() -> str:
        return "ok"

    expected = f"{__name__}.test_a_policy_decorating_several_functions_is_one_breaker_named_after_the_first.<locals>.first"  # noqa: E501
    assert protector.resource_key == expected
    with pytest.raises(ValueError, match="down"):
        first()
    with pytest.raises(ProtectedCallError) as caught:
        second()
    assert caught.value.resource_key == expected


def _key_built_in(filename: str) -> tuple[str, str]:
    """The keys of an anonymous policy and of a protected lambda, both built on line 2 of
    code compiled as ``filename`` and run as ``__main__`` (a notebook cell, a script)."""
    source = (
        "from resilient_circuit import CircuitProtectorPolicy\n"
        "site, lam = CircuitProtectorPolicy(storage=store), CircuitProtectorPolicy(storage=store)\n"
        "lam(lambda: None)\n"
    )
    scope = {"__name__": "__main__", "store": InMemoryStorage()}
    exec(compile(source, filename, "exec"), scope)
    return scope["site"].resource_key, scope["lam"].resource_key


def test_notebook_cells_give_anonymous_policies_keys_of_their_own() -> None:
    """Two cells' line 2 are two breakers; one cell run again is the same one."""
    first = _key_built_in("/tmp/ipykernel_4242/2847361905.py")
    other = _key_built_in("/tmp/ipykernel_4242/1122334455.py")
    again = _key_built_in("/tmp/ipykernel_5151/2847361905.py")  # the next kernel
    older = _key_built_in("<ipython-input-7-9f8e7d6c5b4a>")
    assert first == ("__main__.cell_2847361905:2", "__main__.cell_2847361905.<lambda>:3")
    assert other == ("__main__.cell_1122334455:2", "__main__.cell_1122334455.<lambda>:3")
    assert again == first
    assert older == ("__main__.cell_9f8e7d6c5b4a:2", "__main__.cell_9f8e7d6c5b4a.<lambda>:3")
    assert _key_built_in("/srv/app/main.py") == ("__main__:2", "__main__.<lambda>:3")


# ------------------------------------------------------------- configuration conflicts


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_two_policies_of_one_process_declaring_different_configurations_fail(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Same storage and key, other limits: ValueError naming both configurations."""
    storage: InMemoryStorage | PostgresStorage = (
        InMemoryStorage()
        if kind == "memory"
        else PostgresStorage(request.getfixturevalue("pg_dsn"))
    )
    try:
        _declare_twice(storage)
    finally:
        if isinstance(storage, PostgresStorage):
            storage.close()
    if kind == "postgres":
        with psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True) as conn:
            stored = conn.execute(
                "SELECT failure_limit, cooldown FROM rc_circuit_breaker_status"
            ).fetchall()
        assert stored == [("3/10", timedelta(seconds=30))]


def _declare_twice(storage: InMemoryStorage | PostgresStorage) -> None:
    first = CircuitProtectorPolicy(
        resource_key="payments-api",
        storage=storage,
        failure_limit=Fraction(3, 10),
        cooldown=timedelta(seconds=30),
    )
    with pytest.raises(ValueError, match="payments-api") as caught:
        CircuitProtectorPolicy(resource_key="payments-api", storage=storage)
    message = str(caught.value)
    assert "failure_limit=3/10" in message
    assert "cooldown=30s" in message
    assert "failure_limit=1/1" in message
    first(lambda: None)()  # the refused declaration replaced nothing
    assert first.snapshot().window_capacity == 10
    same = CircuitProtectorPolicy(
        resource_key="payments-api",
        storage=storage,
        failure_limit=Fraction(3, 10),
        cooldown=timedelta(seconds=30),
    )
    assert same.config == first.config
    del first, same, caught  # the traceback holds the first policy too
    # Once no live policy declares it, a new configuration is a redeclaration, not a clash.
    CircuitProtectorPolicy(resource_key="payments-api", storage=storage)


def test_a_stored_configuration_that_differs_is_one_warning_and_the_last_wins(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Process A stores 3/10, 30 s; process C declares defaults: one WARNING, C's is stored."""
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    store_a, store_c = PostgresStorage(pg_dsn), PostgresStorage(pg_dsn)
    try:
        a = CircuitProtectorPolicy(
            resource_key="payments-api",
            storage=store_a,
            failure_limit=Fraction(3, 10),
            cooldown=timedelta(seconds=30),
        )
        a(lambda: None)()
        assert caplog.records == []
        c = CircuitProtectorPolicy(resource_key="payments-api", storage=store_c)
        for _ in range(3):
            c(lambda: None)()
        [warning] = caplog.records
        text = warning.getMessage()
        assert "payments-api" in text
        assert "differs from this process's in failure_limit, window_size, cooldown " in text
        assert "failure_limit=3/10, window_size=10" in text
        assert "cooldown=30s" in text
        assert "failure_limit=1/1, window_size=1" in text
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            stored = conn.execute(
                "SELECT failure_limit, cooldown FROM rc_circuit_breaker_status"
            ).fetchall()
        assert stored == [("1/1", timedelta(0))]
    finally:
        store_a.close()
        store_c.close()


def declare(dsn: str, breakers: dict[str, dict[str, Any]]) -> list[str]:
    """Run a process that declares ``breakers`` and calls each once: its WARNINGs."""
    done = subprocess.run(
        [sys.executable, "-m", "tests._declare_run", json.dumps(breakers)],
        cwd=ROOT,
        env=app_env(dsn),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    warnings: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return warnings


# Each breaker's configuration in a first process, and one option changed in the next.
BASE: dict[str, Any] = {"failure_limit": "3/10", "window_size": 10, "cooldown": 30}
CHANGES: dict[str, dict[str, Any]] = {
    "success_limit": {"success_limit": "2/3"},
    "half_open_timeout": {"half_open_timeout": 7},
    "window_duration": {"window_duration": 60, "minimum_calls": 5},
    "minimum_calls": {"minimum_calls": 4},
    "slow_call_duration": {"slow_call_duration": 2},
    "slow_call_limit": {"slow_call_duration": 2, "slow_call_limit": "1/2"},
    "cooldown_factor": {"cooldown_factor": 2.0},
    "max_cooldown": {"max_cooldown": 600},
}
# What each change makes differ from BASE as stored.
DIFFERING = {
    "success_limit": "success_limit",
    "half_open_timeout": "half_open_timeout",
    "window_duration": "window_duration, minimum_calls",
    "minimum_calls": "minimum_calls",
    "slow_call_duration": "slow_call_duration, slow_call_limit",
    "slow_call_limit": "slow_call_duration, slow_call_limit",
    "cooldown_factor": "cooldown_factor",
    "max_cooldown": "max_cooldown",
}


def test_every_stored_option_that_differs_is_named_in_one_warning(pg_dsn: str) -> None:
    """Process by process: a new option that differs is one WARNING naming it; the same, none."""
    first = {f"svc-{name}": BASE for name in CHANGES}
    changed = {f"svc-{name}": {**BASE, **change} for name, change in CHANGES.items()}
    prefix = "the stored configuration differs from this process's in "
    assert declare(pg_dsn, first) == []
    assert declare(pg_dsn, first) == []  # the same again: nothing to say
    warnings = declare(pg_dsn, changed)
    assert len(warnings) == len(CHANGES), warnings
    for name, message in zip(CHANGES, warnings, strict=True):
        assert message.startswith(f"breaker 'svc-{name}' (namespace 'default'): "), message
        assert prefix + DIFFERING[name] + " (stored: " in message, message
    assert declare(pg_dsn, changed) == []  # the last declaration won and is stored
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        stored = dict(
            conn.execute(
                "SELECT resource_key, cooldown_factor FROM rc_circuit_breaker_status"
            ).fetchall()
        )
    assert stored["svc-cooldown_factor"] == 2.0


# ---------------------------------------------------------------------- connections


def app_connections(dsn: str) -> tuple[int, int]:
    """(pooled, LISTEN) sessions of the library in ``dsn``'s database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            # A LISTEN connection's first statement is its rc_listen.
            "SELECT count(*) FILTER (WHERE query NOT ILIKE '%%rc\\_listen%%'),"
            " count(*) FILTER (WHERE query ILIKE '%%rc\\_listen%%')"
            " FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'resilient_circuit'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_event_loops_share_one_budget_and_idle_connections_close(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three event loops at once hold at most max_connections; idle ones close; no LISTEN.

    A loop that finds the budget spent waits for the next share another gives back: no
    call of any loop is handled as an outage.
    """
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    # A caller waits for a share up to connect_timeout: a bound, long enough that a
    # loaded machine's scheduling is not taken for one loop starving the others.
    store = PostgresStorage(pg_dsn, max_connections=3, idle_timeout=0.5, connect_timeout=10.0)
    protector = CircuitProtectorPolicy(resource_key="budget", storage=store)

    @protector
    def sync_call() -> None:
        time.sleep(0.002)

    @protector
    async def async_call() -> None:
        await asyncio.sleep(0.002)

    stop = threading.Event()
    errors: list[BaseException] = []

    def loop_calling() -> None:
        async def main() -> None:
            async def task() -> None:
                while not stop.is_set():
                    await async_call()

            await asyncio.gather(*(task() for _ in range(4)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    def sample(workers: list[threading.Thread]) -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        stop.clear()
        try:
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                seen.append(app_connections(pg_dsn))
                time.sleep(0.02)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        return seen

    def threads_calling() -> None:
        try:
            while not stop.is_set():
                sync_call()
        except BaseException as exc:
            errors.append(exc)

    def all_closed() -> bool:
        # Idle connections close after idle_timeout, but the pools check only now and then.
        deadline = time.monotonic() + 15
        while app_connections(pg_dsn) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        return app_connections(pg_dsn) == (0, 0)

    try:
        by_loops = sample([threading.Thread(target=loop_calling) for _ in range(3)])
        # The sync pool's budget is measured on its own, once the loops' pool is idle.
        assert all_closed()
        by_threads = sample([threading.Thread(target=threads_calling) for _ in range(6)])
        assert errors == []
        for seen in (by_loops, by_threads):
            assert 2 <= max(pooled for pooled, _ in seen) <= 3, seen
            assert max(listen for _, listen in seen) == 0, seen
        assert all_closed()
        # Nothing went wrong: no outage, no error. Only a loop that waited out the whole
        # bound for a share (a slow machine, not a fault) may have been said: that call
        # alone is handled per on_storage_error, never as an outage of the store.
        said = [r.getMessage() for r in caplog.records if r.name.startswith("resilient")]
        assert [m for m in said if "while other event loops held" not in m] == [], said
        assert store.outage.down_since is None
    finally:
        store.close()


def test_a_loop_refused_a_share_of_the_budget_logs_no_pool_warning(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another loop holding the rest of the budget is contention, not a connection error.

    A loop's pool that got the last share and still has callers waiting tries one more
    connection, which the budget refuses. psycopg_pool would log that attempt as "error
    connecting" and "reconnection attempt failed" WARNINGs, on stderr even where logging
    is not set up, while every call runs normally on the connection the pool has.
    """
    caplog.set_level(logging.WARNING)
    store = PostgresStorage(pg_dsn, max_connections=2)
    protector = CircuitProtectorPolicy(resource_key="shares", storage=store)

    @protector
    async def call() -> str:
        await asyncio.sleep(0.01)
        return "ran"

    holding = threading.Event()
    release = threading.Event()

    def loop_keeping_its_idle_connection() -> None:
        async def main() -> None:
            await call()  # its pool keeps one share of the budget, idle
            holding.set()
            await asyncio.to_thread(release.wait, 60)

        asyncio.run(main())

    async def calls_at_once() -> list[str]:
        return await asyncio.gather(*(call() for _ in range(4)))

    holder = threading.Thread(target=loop_keeping_its_idle_connection)
    holder.start()
    try:
        assert holding.wait(30)
        assert asyncio.run(calls_at_once()) == ["ran"] * 4
    finally:
        release.set()
        holder.join(30)
        store.close()
    assert [(r.name, r.getMessage()) for r in caplog.records] == []


def test_a_process_running_many_event_loops_closes_its_connections_and_exits(
    pg_dsn: str,
) -> None:
    """Loops ended mid-connect, overlapping loops in threads, loops closed by hand.

    Every ended loop's connections are closed, ``close()`` discards the pools of loops
    closed without ``asyncio.run``, no thread is left, and the process exits (run apart,
    with a timeout: a hang fails this test instead of hanging the suite).
    """
    done = subprocess.run(
        [sys.executable, "-m", "tests._loops_run"],
        cwd=ROOT,
        env=app_env(pg_dsn),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "cut_short": 0,
        "overlapping": 0,
        # Its pool outlives a loop closed by hand, until the next loop or close().
        "closed_by_hand": report["closed_by_hand"],
        "next_loop": 0,
        "closed": 0,
        "threads": [],
        "non_daemon": [],
    }, done.stderr
    assert report["closed_by_hand"] >= 1


@pytest.mark.parametrize(
    ("mode", "effect"),
    [
        ("open", "calls proceed without a breaker (on_storage_error='open')"),
        ("closed", "calls are rejected (on_storage_error='closed')"),
        ("local", "calls use an in-memory breaker of this process (on_storage_error='local')"),
    ],
)
def test_the_outage_warning_says_what_calls_do_in_each_mode(
    mode: Any, effect: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING per outage, whose words match on_storage_error."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="resilient_circuit")
    store = PostgresStorage(f"host=127.0.0.1 port={port} dbname=app", connect_timeout=0.5)
    protector = CircuitProtectorPolicy(resource_key="svc", storage=store, on_storage_error=mode)
    try:
        call = protector(lambda: "ok")
        try:
            call()
        except ProtectedCallError:
            assert mode == "closed"
        [warning] = [r for r in caplog.records if r.name == "resilient_circuit.storage"]
        assert effect in warning.getMessage()
    finally:
        store.close()


# ------------------------------------------------------------------------------ small


def test_a_rejection_repr_shows_key_state_and_retry_after() -> None:
    """repr(ProtectedCallError) says which breaker, in which state, for how long."""
    protector = CircuitProtectorPolicy(
        resource_key="payments", storage=InMemoryStorage(), cooldown=timedelta(minutes=5)
    )
    protector.status = "OPEN"
    with pytest.raises(ProtectedCallError) as caught:
        protector(lambda: None)()
    text = repr(caught.value)
    assert text.startswith("ProtectedCallError(resource_key='payments', state='OPEN', ")
    assert "retry_after=datetime.timedelta(seconds=" in text


def test_the_cli_prints_its_version_and_help() -> None:
    """--version prints the package version; no command prints the help and exits 0."""
    import resilient_circuit

    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0
    assert resilient_circuit.__version__ in version.output
    bare = CliRunner().invoke(cli, [])
    assert bare.exit_code == 0
    assert "pg-check" in bare.output
    assert "pg-setup" in bare.output


# ------------------------------------------------------------ rc_force, rc_reset, rc_set_state


def test_forcing_or_resetting_a_breaker_that_does_not_exist_raises_instead_of_creating_it(
    pg_dsn: str,
) -> None:
    """A typo in rc_force/rc_reset: SQLSTATE P0002 naming the key, and no row appears."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in (
            "SELECT * FROM rc_force('nosuchkey2', 'OPEN')",
            "SELECT * FROM rc_reset('nosuchkey2')",
        ):
            with pytest.raises(psycopg.errors.NoDataFound, match="nosuchkey2"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM rc_circuit_breakers").fetchone() == (0,)
        conn.execute("SELECT * FROM rc_configure('payments', 'default', 1, 2)")
        assert conn.execute("SELECT state FROM rc_force('payments', 'OPEN')").fetchone() == (
            "OPEN",
        )
        assert conn.execute("SELECT state FROM rc_reset('payments')").fetchone() == ("CLOSED",)


def test_set_state_as_the_app_role_is_announced_and_kept_to_its_namespaces(
    pg_dsn: str, pg_role: Any
) -> None:
    """rc_set_state notifies, works for the app role in its namespace, refuses other ones."""
    role = pg_role()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _installer.install(conn, app_role=role, namespaces=["shop"])
    app = role.dsn(pg_dsn)
    store = PostgresStorage(app, namespace="shop")
    watcher = PostgresStorage(pg_dsn, namespace="shop")
    peer = CircuitProtectorPolicy(
        resource_key="svc", storage=watcher, admission="cached", cooldown=timedelta(minutes=5)
    )
    heard: list[Any] = []
    try:
        assert peer(lambda: "ok")() == "ok"
        watcher.subscribe(heard.append)
        assert watcher.wait_listening(10)
        store.set_state("svc", "OPEN", 3, time.time() + 120, [False, False, False])
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(t.resource_key, t.new.name) for t in heard] == [("svc", "OPEN")]
        # The peer admitted from its cache; the announcement made it ask again.
        with pytest.raises(ProtectedCallError):
            peer(lambda: "ok")()
        state = store.get_state("svc")
        assert state is not None
        assert (state["state"], state["failure_count"]) == ("OPEN", 3)
        with pytest.raises(StorageAccessDenied, match="may not use namespace"):
            store.set_state("svc", "CLOSED", 0, 0, namespace="other")
        assert store.outage.down_since is None
    finally:
        store.close()
        watcher.close()


def test_an_install_older_than_the_client_is_not_ready_and_names_pg_setup(pg_dsn: str) -> None:
    """An ``rc_configure`` without ``p_restore`` (before migration 0014) breaks every first
    call of a breaker: pg-check says so and a call raises SchemaNotReady naming pg-setup,
    instead of "ready" and an unexplained UndefinedFunction."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for (signature,) in conn.execute(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = 'rc_configure'"
        ).fetchall():
            conn.execute(f"DROP FUNCTION {signature}")
        conn.execute(
            "CREATE FUNCTION rc_configure(p_key text, p_namespace text DEFAULT 'default')"
            " RETURNS void LANGUAGE sql AS ''"
        )
    older = pg_check("--dsn", pg_dsn)
    assert older.exit_code == 1, older.output
    assert "rc_configure" in older.output
    assert "pg-setup" in older.output

    store = PostgresStorage(pg_dsn)
    protector = CircuitProtectorPolicy(resource_key="svc", storage=store)
    try:
        with pytest.raises(SchemaNotReady, match=r"rc_configure.*resilient-circuit-cli pg-setup"):
            protector.call(lambda: "ok")
    finally:
        store.close()
