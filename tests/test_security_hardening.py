"""Who may replace the functions, forged payloads, values that do not fit SQL's types.

Every role here is created by the test (``pg_role``: unique names and passwords, dropped
afterwards) and logs in itself, so the suite passes under password authentication.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from resilient_circuit import CircuitProtectorPolicy, _installer
from resilient_circuit.cli import main as cli
from resilient_circuit.cli.connect import connect
from resilient_circuit.retry_budget import PostgresBudgetStore
from resilient_circuit.storage import InMemoryStorage, PostgresStorage
from resilient_circuit.storage.postgres.notify import Listener, Transition
from tests._helpers import channel, wait_for

if TYPE_CHECKING:
    from tests.conftest import PgRole

Conn = psycopg.Connection[Any]
INT4_MAX = 2**31 - 1


def _connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True)


def _one(conn: Conn, query: str, *args: Any) -> tuple[Any, ...]:
    row = conn.execute(query, args).fetchone()
    assert row is not None, query
    return tuple(row)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _installer_name(dsn: str) -> str:
    with _connect(dsn) as conn:
        return str(_one(conn, "SELECT current_user")[0])


def _rc_functions(conn: Conn, schema: str) -> int:
    return int(
        _one(
            conn,
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s AND p.proname LIKE 'rc\\_%%'",
            schema,
        )[0]
    )


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


# ------------------------------------------------- who may replace the functions (1)


def test_pg_setup_refuses_public_owned_by_another_database_owner(
    pg_role: Callable[[], PgRole], pg_empty_dsn: str, pg_backend: Any
) -> None:
    """Public owned via pg_database_owner by another role: refused, naming both fixes."""
    owner = pg_role()
    installer = _installer_name(pg_empty_dsn)
    with _connect(pg_empty_dsn) as conn:
        dbname = _one(conn, "SELECT current_database()")[0]
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(_ident(dbname), _ident(owner)))
        if pg_backend.version_num >= 140000:
            conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
        else:  # pragma: no cover - PostgreSQL 13
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(_ident(owner)))
        with pytest.raises(_installer.SetupError) as refused:
            _installer.install(conn)
        assert _rc_functions(conn, "public") == 0
    message = str(refused.value)
    assert f'ALTER SCHEMA "public" OWNER TO "{installer}";' in message
    assert f'CREATE SCHEMA rc AUTHORIZATION "{installer}";' in message
    assert "--schema rc" in message


def test_pg_setup_refuses_a_schema_owned_by_another_role(
    pg_role: Callable[[], PgRole], pg_empty_dsn: str
) -> None:
    """A schema that another role owns could have our functions dropped and replaced: refused."""
    owner, app = pg_role(), pg_role()
    with _connect(pg_empty_dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA rcx AUTHORIZATION {}").format(_ident(owner)))
        with pytest.raises(_installer.SetupError, match="owned by"):
            _installer.install(conn, schema="rcx", app_role=app)
        assert _rc_functions(conn, "rcx") == 0


def test_pg_setup_refuses_an_app_role_that_owns_the_database(
    pg_role: Callable[[], PgRole], pg_empty_dsn: str
) -> None:
    """`createdb -O app` then `pg-setup --app-role app`: refused even in a dedicated schema."""
    app = pg_role()
    with _connect(pg_empty_dsn) as conn:
        dbname = _one(conn, "SELECT current_database()")[0]
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(_ident(dbname), _ident(app)))
        conn.execute("CREATE SCHEMA rc")
        with pytest.raises(_installer.SetupError, match="owns the database"):
            _installer.install(conn, schema="rc", app_role=app)


def test_pg_setup_refuses_an_app_role_that_may_become_the_installer(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A member of the installing role (even NOINHERIT, through SET ROLE) is no app role."""
    app = pg_role()
    installer = _installer_name(pg_empty_dsn)
    with _connect(pg_empty_dsn) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOINHERIT").format(_ident(app)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(_ident(installer), _ident(app)))
        try:
            with pytest.raises(_installer.SetupError, match="member"):
                _installer.install(conn, app_role=app)
        finally:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(_ident(installer), _ident(app)))


def test_pg_setup_refuses_a_schema_holding_rc_objects_of_another_role(
    pg_role: Callable[[], PgRole], pg_empty_dsn: str
) -> None:
    """A look-alike rc_* function left by a role that could once create in public is refused."""
    planter = pg_role()
    with _connect(pg_empty_dsn) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(_ident(planter)))
    with _connect(planter.dsn(pg_empty_dsn)) as conn:
        conn.execute(
            "CREATE FUNCTION public.rc_gc(p_idle interval) RETURNS integer"
            " LANGUAGE sql AS 'SELECT 0'"
        )
    with _connect(pg_empty_dsn) as conn:
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(_ident(planter)))
        with pytest.raises(_installer.SetupError, match="rc_gc"):
            _installer.install(conn)
        owner = _one(
            conn,
            "SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'rc_gc'",
        )
    assert owner == (str(planter),)


def test_pg_setup_refuses_tables_others_may_put_triggers_on(
    pg_role: Callable[[], PgRole], pg_dsn: str
) -> None:
    """A trigger runs inside the functions with the owner's rights: TRIGGER grants are refused."""
    role = pg_role()
    with _connect(pg_dsn) as conn:
        conn.execute(sql.SQL("GRANT TRIGGER ON rc_circuit_breakers TO {}").format(_ident(role)))
        with pytest.raises(_installer.SetupError, match="TRIGGER on rc_circuit_breakers"):
            _installer.install(conn, app_role=role)
        conn.execute(sql.SQL("REVOKE TRIGGER ON rc_circuit_breakers FROM {}").format(_ident(role)))
        _installer.install(conn, app_role=role)


@pytest.mark.parametrize("schema", ["rc$$x", "rc$x", "rc$$; SELECT 1; --"])
def test_pg_setup_refuses_a_schema_name_that_could_break_the_sql_files(
    pg_empty_dsn: str, schema: str
) -> None:
    """A `$` would end the functions' dollar-quoted bodies: refused before anything runs."""
    result = CliRunner().invoke(
        cli, ["pg-setup", "--yes", "--dsn", pg_empty_dsn, "--schema", schema]
    )
    assert result.exit_code != 0
    assert "schema" in result.output + (result.stderr or "")
    assert "$" in (result.stderr or result.output)
    with _connect(pg_empty_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", schema) == (0,)


# ------------------------------------------------------------- forged payloads (2)

_GOOD = {"namespace": "default", "key": "k", "from": "OPEN", "to": "CLOSED", "generation": 1}
_HOSTILE_PAYLOADS = [
    json.dumps(_GOOD).replace('"generation": 1', '"generation": 1e400'),
    "[" * 7000,
    '{"namespace": ' * 500,
    json.dumps({**_GOOD, "open_until": "9999-12-31T23:59:59.999999+14:00"}),
    json.dumps({**_GOOD, "open_until": 5}),
    json.dumps({**_GOOD, "generation": "9" * 5000}),
    json.dumps({**_GOOD, "key": {"nested": [1, 2, 3]}}),
    "x" * 7999,
]


@pytest.mark.parametrize("payload", _HOSTILE_PAYLOADS)
def test_a_malformed_payload_parses_as_nothing(payload: str) -> None:
    """No payload raises: overflowing numbers, deep nesting, odd dates are all ignored."""
    assert Transition.parse(payload) is None


def test_a_listener_survives_hostile_payloads_and_a_failing_subscriber(
    pg_dsn: str, pg_role: Callable[[], PgRole], stores: Callable[..., PostgresStorage]
) -> None:
    """After every hostile payload (and a subscriber that raises) real transitions still arrive."""
    store = stores()
    heard: list[Transition] = []

    def fragile(event: Transition) -> None:
        heard.append(event)
        raise RuntimeError("subscriber bug")

    store.subscribe(fragile)
    store.listen()
    assert store.wait_listening()
    forger = pg_role()
    # Told the channel's name: a role that may not learn it could not reach the listener.
    known = channel(pg_dsn, "default")
    with _connect(forger.dsn(pg_dsn)) as conn:
        for payload in _HOSTILE_PAYLOADS:
            conn.execute("SELECT pg_notify(%s, %s)", [known, payload])
    with _connect(pg_dsn) as owner:
        owner.execute("SELECT * FROM rc_configure('k', 'default')")
        for _attempt in range(3):
            owner.execute("SELECT * FROM rc_force('k', 'OPEN')")
            owner.execute("SELECT * FROM rc_force('k', 'CLOSED')")
            if wait_for(lambda: len(heard) >= 2, timeout=5):
                break
    assert store.listening()
    assert [(t.old.value, t.new.value) for t in heard[:2]] == [
        ("CLOSED", "OPEN"),
        ("OPEN", "CLOSED"),
    ]


def test_the_listener_reconnects_after_any_error_of_its_own(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception in the LISTEN thread is logged, and the thread listens again."""
    heard: list[Transition | None] = []
    failed = threading.Event()

    def on_event(event: Transition | None) -> None:
        heard.append(event)
        if event is not None and not failed.is_set():
            failed.set()
            raise OverflowError("a bug while handling a transition")

    listener = Listener(
        pg_dsn,
        {"autocommit": True},
        on_event,
        schema="public",
        namespaces=["default"],
        check_route=False,
    )
    listener.start()
    try:
        assert listener.wait_until_listening(10)
        with _connect(pg_dsn) as owner:
            owner.execute("SELECT * FROM rc_configure('k', 'default')")
            owner.execute("SELECT * FROM rc_force('k', 'OPEN')")
            assert wait_for(failed.is_set, timeout=10)
            # Reconnected: a second (re)connection marker, then transitions arrive again.
            assert wait_for(lambda: heard.count(None) >= 2, timeout=10)
            assert listener.wait_until_listening(10)
            owner.execute("SELECT * FROM rc_force('k', 'CLOSED')")
            assert wait_for(lambda: len([e for e in heard if e is not None]) >= 2, timeout=10)
    finally:
        listener.stop()
    assert any("reconnecting" in r.getMessage() for r in caplog.records)


def test_cli_watch_never_crashes_on_a_payload(pg_dsn: str, pg_role: Callable[[], PgRole]) -> None:
    """watch skips hostile payloads and prints the real transition that follows."""
    forger = pg_role()

    def listening() -> bool:
        # Sent before watch listens, the payloads would prove nothing and the real
        # transition would be missed: a loaded machine may take long to get there.
        with _connect(pg_dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle' AND query ILIKE '%rc\\_listen%'"
            ).fetchone()
        return row is not None and row[0] > 0

    def send() -> None:
        wait_for(listening, timeout=30, interval=0.05)
        known = channel(pg_dsn)  # watch listens on the channel of every namespace
        with _connect(forger.dsn(pg_dsn)) as conn:
            for payload in _HOSTILE_PAYLOADS:
                conn.execute("SELECT pg_notify(%s, %s)", [known, payload])
        with _connect(pg_dsn) as owner:
            owner.execute("SELECT * FROM rc_configure('after', 'default')")
            owner.execute("SELECT * FROM rc_force('after', 'OPEN')")

    sender = threading.Thread(target=send)
    sender.start()
    try:
        result = CliRunner().invoke(
            cli, ["watch", "--dsn", pg_dsn, "--count", "1", "--timeout", "10"]
        )
    finally:
        sender.join()
    assert result.exit_code == 0, (result.output, result.exception)
    assert "after" in result.output


# -------------------------------------------------- values that fit SQL's types (3)


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"failure_limit": Fraction(2**40 - 1, 2**40), "window_size": 10}, "failure_limit"),
        ({"failure_limit": Fraction(1, 2**31), "window_size": 10}, "failure_limit"),
        ({"failure_limit": 0.123456789012, "window_size": 10}, "failure_limit"),
        ({"success_limit": Fraction(1, 2**31)}, "success_limit"),
        (
            {"slow_call_duration": timedelta(seconds=1), "slow_call_limit": Fraction(1, 2**31)},
            "slow_call_limit",
        ),
        (
            {"slow_call_duration": timedelta(seconds=1), "slow_call_limit": Fraction(1, 2**40)},
            "slow_call_limit",
        ),
    ],
)
def test_a_limit_that_does_not_fit_int4_is_refused_at_construction(
    options: dict[str, Any], parameter: str
) -> None:
    """Fractions are sent as int4 numerator and denominator: larger ones are refused up front."""
    with pytest.raises(ValueError, match=parameter):
        CircuitProtectorPolicy(resource_key="k", storage=InMemoryStorage(), **options)


def test_the_largest_settings_that_python_accepts_are_accepted_by_sql(
    pg_dsn: str, stores: Callable[..., PostgresStorage]
) -> None:
    """Every bound Python accepts at its limit is stored by rc_configure, and the policy trips."""
    store = stores()
    policy = CircuitProtectorPolicy(
        resource_key="edge",
        storage=store,
        window_duration=timedelta(days=365),
        minimum_calls=INT4_MAX,
        slow_call_duration=timedelta(days=365),
        slow_call_limit=Fraction(INT4_MAX - 1, INT4_MAX),
        cooldown=timedelta(days=365),
        half_open_timeout=timedelta(days=365),
        cooldown_factor=100,
        max_cooldown=timedelta(days=365),
    )

    @policy
    def ok() -> str:
        return "ran"

    assert ok() == "ran"
    with _connect(pg_dsn) as conn:
        assert _one(conn, "SELECT minimum_calls FROM rc_circuit_breaker_status") == (INT4_MAX,)


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ("1::bigint, 2199023255552::bigint, 10", "p_failure_limit"),
        (
            "1, 1, NULL, NULL, NULL, '0', '10 seconds', '1 minute', 2199023255552::bigint",
            "p_minimum_calls",
        ),
        (
            "1, 1, NULL, NULL, NULL, '0', '10 seconds', NULL, NULL, '1 second', 1,"
            " 2199023255552::bigint",
            "p_slow_call_limit",
        ),
        ("1, 1, 2199023255552::bigint", "p_window_size"),
    ],
)
def test_sql_refuses_numbers_wider_than_int4_with_22023(
    pg_dsn: str, arguments: str, parameter: str
) -> None:
    """A plain-SQL caller passing bigint numbers gets a 22023 naming the parameter."""
    with (
        _connect(pg_dsn) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match=parameter),
    ):
        conn.execute(f"SELECT * FROM rc_configure('k', 'default', {arguments})")


# ----------------------------------------- qualified SQL outside the functions (4)

_PLANT_EQ = """
CREATE TABLE public.planted_calls (ran_as text, what text);
GRANT INSERT ON public.planted_calls TO PUBLIC;
CREATE FUNCTION public.planted_eq(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS $p$
BEGIN
    INSERT INTO public.planted_calls VALUES (current_user, '=(varchar, varchar)');
    RETURN a::text OPERATOR(pg_catalog.=) b::text;
END $p$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.planted_eq);
CREATE FUNCTION public.planted_plus(a bigint, b integer) RETURNS bigint LANGUAGE plpgsql AS $p$
BEGIN
    INSERT INTO public.planted_calls VALUES (current_user, '+(bigint, integer)');
    RETURN a OPERATOR(pg_catalog.+) b;
END $p$;
CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = public.planted_plus);
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $p$
BEGIN
    INSERT INTO public.planted_calls VALUES (current_user, 'clock_timestamp()');
    RETURN pg_catalog.clock_timestamp();
END $p$;
"""


def test_admin_calls_from_python_never_run_planted_operators(
    pg_dsn: str, pg_role: Callable[[], PgRole], stores: Callable[..., PostgresStorage]
) -> None:
    """set_state and friends, run in the owner's own session, resolve nothing through public."""
    hostile = pg_role()
    with _connect(pg_dsn) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(_ident(hostile)))
    with _connect(hostile.dsn(pg_dsn)) as conn:
        conn.execute(_PLANT_EQ)
    store = stores()
    store.set_state("k", "OPEN", 1, time.time() + 60)
    store.set_state("k", "DISABLED", 0, 0)
    assert store.get_state("k") is not None
    store.forget("k")
    store.check()
    with _connect(pg_dsn) as conn:
        assert conn.execute("SELECT * FROM public.planted_calls").fetchall() == []


# ------------------------------------------------ admin entry points validate (7)

_BAD_NAMES: list[tuple[object, type[Exception]]] = [
    ("a\x00b", ValueError),
    ("a\ud800b", ValueError),
    ("x" * 10_000_000, ValueError),
    ("", ValueError),
    (5, TypeError),
    (b"k", TypeError),
]


@pytest.mark.parametrize(("value", "error"), _BAD_NAMES, ids=lambda v: repr(v)[:12])
@pytest.mark.parametrize("where", ["resource_key", "namespace"])
@pytest.mark.parametrize("operation", ["get_state", "set_state", "delete_state", "forget"])
def test_admin_entry_points_validate_names_before_any_round_trip(
    pg_dsn: str,
    stores: Callable[..., PostgresStorage],
    operation: str,
    where: str,
    value: object,
    error: type[Exception],
) -> None:
    """Bad keys and namespaces raise the parameter-naming error, as for policies, in both stores."""
    memory = [] if operation == "forget" else [InMemoryStorage()]  # forget is PostgreSQL's
    for store in (stores(), *memory):
        key, ns = (value, None) if where == "resource_key" else ("k", value)
        with pytest.raises(error, match=where):
            if operation == "set_state":
                store.set_state(key, "OPEN", 0, 0, namespace=ns)  # type: ignore[arg-type]
            else:
                getattr(store, operation)(key, namespace=ns)


@pytest.mark.parametrize("command", ["forget", "force", "reset"])
def test_cli_admin_commands_validate_the_key(pg_dsn: str, command: str) -> None:
    """A NUL in a key is refused by the CLI with a message naming it, not a database error."""
    args = [command, "a\x00b"] + (["OPEN"] if command == "force" else []) + ["--dsn", pg_dsn]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "key" in (result.stderr or result.output)
    assert "NUL" in (result.stderr or result.output)


# ------------------------------------------------------------------------ LOW (8)


def test_sql_checks_the_namespace_length_before_the_grant_and_never_echoes_it(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A 10 MB namespace is a short 22023 naming p_namespace, not a 42501 echoing 10 MB."""
    app = pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=app, namespaces=["A"])
    with _connect(app.dsn(pg_dsn)) as conn:
        for query in (
            "SELECT * FROM rc_try_acquire('k', repeat('n', 10000000))",
            "SELECT * FROM rc_record('k', true, repeat('n', 10000000))",
            "SELECT rc_forget('k', repeat('n', 10000000))",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
                conn.execute(query)
            assert "p_namespace" in str(refused.value)
            assert len(str(refused.value)) < 500


def test_an_unknown_state_name_is_never_echoed_in_full(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A 10 MB state name is a short 22023 naming p_state, from rc_force and rc_set_state."""
    app = pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=app, namespaces=["A"])
    with _connect(app.dsn(pg_dsn)) as conn:
        conn.execute("SELECT * FROM rc_configure('k', 'A')")
        for query in (
            "SELECT * FROM rc_force('k', repeat('s', 10000000), 'A')",
            "SELECT * FROM rc_set_state('k', repeat('s', 10000000), 0, NULL, NULL, 'A')",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
                conn.execute(query)
            assert "p_state" in str(refused.value)
            assert len(str(refused.value)) < 500


def test_namespace_grants_follow_the_role_not_its_name(
    pg_dsn: str, pg_role: Callable[[], PgRole], pg_admin_dsn: str
) -> None:
    """A renamed role keeps its namespaces; a new role given the old name gets none of them."""
    tenant, newcomer = pg_role(), pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=tenant, namespaces=["payments"])
        _installer.install(conn, app_role=newcomer, namespaces=["other"])
    renamed = f"{tenant}_old"
    with _connect(pg_admin_dsn) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(_ident(tenant), _ident(renamed)))
        conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(_ident(newcomer), _ident(tenant)))
    try:
        # Renaming clears an MD5 password (it is salted with the name): set them again.
        with _connect(pg_admin_dsn) as conn:
            for name, password in ((renamed, tenant.password), (tenant, newcomer.password)):
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(_ident(name), sql.Literal(password))
                )
        newcomer_dsn = psycopg.conninfo.make_conninfo(
            pg_dsn, user=str(tenant), password=newcomer.password
        )
        with _connect(newcomer_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM rc_force('k', 'OPEN', 'payments')")
        renamed_dsn = psycopg.conninfo.make_conninfo(pg_dsn, user=renamed, password=tenant.password)
        with _connect(renamed_dsn) as conn:
            conn.execute("SELECT * FROM rc_configure('k', 'payments')")
            conn.execute("SELECT * FROM rc_force('k', 'OPEN', 'payments')")
    finally:
        with _connect(pg_admin_dsn) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(_ident(tenant), _ident(newcomer))
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(_ident(renamed), _ident(tenant))
            )


def test_a_poisoned_budget_counter_saturates_instead_of_overflowing(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """A tenant depositing bigint-max first attempts cannot make later deposits fail."""
    app = pg_role()
    with connect(pg_dsn) as conn:
        _installer.install(conn, app_role=app, namespaces=["A"])
    with _connect(app.dsn(pg_dsn)) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_first_attempts"):
            conn.execute("SELECT rc_budget_deposit('poison', 'A', 9223372036854775807, 0, 0)")
        conn.execute("SELECT rc_budget_deposit('poison', 'A', 1, 0.2, 10)")
    with _connect(pg_dsn) as owner:
        # Years of deposits at the per-call bound, in one step.
        owner.execute(
            "UPDATE rc_retry_budgets SET first_attempts = 9223372036854775807 - 5,"
            " retries = 9223372036854775807, refusals = 9223372036854775807"
        )
    with _connect(app.dsn(pg_dsn)) as conn:
        conn.execute("SELECT rc_budget_deposit('poison', 'A', 1000000000, 0.2, 10)")
        assert _one(conn, "SELECT rc_budget_withdraw('poison', 'A')") == (True,)
        for _ in range(100):
            conn.execute("SELECT rc_budget_withdraw('poison', 'A', 0, 0, 0)")
    with _connect(pg_dsn) as owner:
        counters = _one(owner, "SELECT first_attempts, retries, refusals FROM rc_retry_budgets")
    assert counters == (2**63 - 1,) * 3
    # A backlog beyond the per-call bound (a long outage) is deposited up to the bound.
    store = PostgresBudgetStore(app.dsn(pg_dsn))
    try:
        assert store.settle("A", "backlog", 5_000_000_000, 0.2, 10, withdraw=True) is True
    finally:
        store.close()
    store = PostgresBudgetStore(app.dsn(pg_dsn))
    try:
        store.settle("A", "poison", 1, 0.2, 10, withdraw=False)
        assert store.settle("A", "poison", 0, 0.2, 10, withdraw=True) is True
    finally:
        store.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw-XYZ@h:notaport/db",
        "postgresql://u:pw-XYZ@h:99999/db",
        "host=h port=abc password=pw-XYZ",
    ],
)
def test_a_dsn_with_a_bad_port_is_refused_at_construction(dsn: str) -> None:
    """A port that is no number in 1..65535 fails when the store is built, password masked."""
    with pytest.raises(ValueError, match="port") as refused:
        PostgresStorage(dsn)
    assert "pw-XYZ" not in str(refused.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw-XYZ@h/db?sslmode=bogus",
        "host=h sslmode=Require password=pw-XYZ",
    ],
)
def test_a_dsn_with_an_unknown_sslmode_is_refused_at_construction(dsn: str) -> None:
    """libpq would refuse it only when connecting, which a readiness probe then reports
    as an unreachable server; it is a mistake in the connection string."""
    with pytest.raises(ValueError, match="sslmode") as refused:
        PostgresStorage(dsn)
    assert "pw-XYZ" not in str(refused.value)
