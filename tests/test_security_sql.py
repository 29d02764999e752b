"""The SQL layer against hostile roles: planted objects, other tenants, unbounded settings.

Every role here is created by the test (``pg_role``: unique names, dropped afterwards) and
logs in itself, because the functions judge the session's login role.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from resilient_circuit import _installer
from resilient_circuit._machine import Config
from resilient_circuit.cli import main
from resilient_circuit.cli.connect import connect

if TYPE_CHECKING:
    from tests.conftest import PgRole

Conn = psycopg.Connection[Any]


def _connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True)


def _one(conn: Conn, query: str, *args: Any) -> tuple[Any, ...]:
    row = conn.execute(query, args).fetchone()
    assert row is not None, query
    return tuple(row)


def _app(pg_dsn: str, role: PgRole, *namespaces: str) -> str:
    """Grant ``role`` the functions for ``namespaces``; return a DSN logging in as it."""
    with connect(pg_dsn) as conn:
        if namespaces:
            _installer.install(conn, app_role=role, namespaces=list(namespaces))
        else:
            _installer.install(conn, app_role=role)
    return role.dsn(pg_dsn)


def _pg_setup(*args: str) -> Result:
    return CliRunner().invoke(main, ["pg-setup", *args])


# --------------------------------------------------------------- planted look-alikes

# Each planted object logs that it ran, tries to make its author a superuser (which
# succeeds only when it runs as a superuser, e.g. the functions' owner) and then does
# what the built-in it imitates does, so nothing else shows that it ran.
_PLANT = """
CREATE TABLE public.planted_calls (ran_as text, what text);
GRANT INSERT ON public.planted_calls TO PUBLIC;

CREATE FUNCTION public.planted_log(p_what text) RETURNS void LANGUAGE plpgsql AS $p$
BEGIN
    INSERT INTO public.planted_calls VALUES (current_user, p_what);
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', {hostile});
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END $p$;

CREATE FUNCTION public.planted_eq_vt(a varchar, b text) RETURNS boolean LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_log('=(varchar, text)'); RETURN a::text = b; END $p$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = text, FUNCTION = public.planted_eq_vt);

CREATE FUNCTION public.planted_eq_vv(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_log('=(varchar, varchar)'); RETURN a::text = b::text; END $p$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.planted_eq_vv);

CREATE FUNCTION public.planted_append(a boolean[], b boolean) RETURNS boolean[]
LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_log('||(boolean[], boolean)'); RETURN array_append(a, b); END $p$;
CREATE OPERATOR public.|| (LEFTARG = boolean[], RIGHTARG = boolean,
                           FUNCTION = public.planted_append);

CREATE FUNCTION public.cardinality(a boolean[]) RETURNS integer LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_log('cardinality(boolean[])'); RETURN pg_catalog.cardinality(a); END
$p$;

CREATE FUNCTION public.array_positions(a boolean[], b boolean) RETURNS integer[]
LANGUAGE plpgsql AS $p$
BEGIN
    PERFORM public.planted_log('array_positions(boolean[], boolean)');
    RETURN pg_catalog.array_positions(a, b);
END $p$;

CREATE FUNCTION public.unnest(a timestamptz[]) RETURNS SETOF timestamptz LANGUAGE plpgsql AS $p$
BEGIN
    PERFORM public.planted_log('unnest(timestamptz[])');
    RETURN QUERY SELECT pg_catalog.unnest(a);
END $p$;
"""


@pytest.fixture
def app_dsn(pg_dsn: str, pg_role: Callable[[], PgRole]) -> str:
    """A DSN logging in as an application role granted namespace 'default' (pg-setup's default)."""
    return _app(pg_dsn, pg_role())


@pytest.fixture
def hostile(pg_dsn: str, pg_role: Callable[[], PgRole], app_dsn: str) -> str:
    """A role given CREATE on public after the install; it planted look-alikes there."""
    role = pg_role()
    with _connect(pg_dsn) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    with _connect(role.dsn(pg_dsn)) as conn:
        conn.execute(sql.SQL(_PLANT).format(hostile=sql.Literal(role)).as_string(conn))
    return role


def test_operators_and_functions_planted_in_public_never_run(
    pg_dsn: str, app_dsn: str, hostile: str
) -> None:
    """The app's calls through every public function never run a planted object as owner."""
    with _connect(app_dsn) as app:
        app.execute("SELECT * FROM rc_configure('pay', 'default', 1, 2, 4, 1, 2, '1 hour')")
        for success in (True, False, True, False):
            app.execute("SELECT * FROM rc_record('pay', %s)", [success])
        assert _one(app, "SELECT state FROM rc_status('pay')") == ("OPEN",)
        app.execute("SELECT * FROM rc_try_acquire('pay')")
        app.execute("SELECT * FROM rc_force('pay', 'HALF_OPEN')")
        assert _one(app, "SELECT permitted FROM rc_try_acquire('pay')") == (True,)
        app.execute("SELECT * FROM rc_record_many('pay', 'default', '{t,f,t}', NULL)")
        app.execute("SELECT * FROM rc_reset('pay')")
        app.execute("SELECT * FROM rc_record('fresh', false)")
        app.execute("SELECT * FROM rc_circuit_breaker_status").fetchall()
    with _connect(pg_dsn) as conn:
        ran = conn.execute("SELECT ran_as, what FROM public.planted_calls").fetchall()
        superuser = _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", hostile)
    assert ran == []
    assert superuser == (False,)


def test_forget_and_gc_never_run_planted_objects(pg_dsn: str, app_dsn: str, hostile: str) -> None:
    """rc_forget and rc_gc resolve nothing through the writable public schema either."""
    with _connect(app_dsn) as app:
        app.execute("SELECT * FROM rc_record('a', true)")
        app.execute("SELECT * FROM rc_record('b', true)")
        assert _one(app, "SELECT rc_forget('a')") == (True,)
        assert _one(app, "SELECT rc_gc('0 seconds')") == (1,)
    with _connect(pg_dsn) as conn:
        assert conn.execute("SELECT * FROM public.planted_calls").fetchall() == []


def test_every_function_pins_pg_catalog_and_pg_temp(pg_dsn: str) -> None:
    """No installed rc_* function searches a schema that others could write."""
    with _connect(pg_dsn) as conn:
        configs = conn.execute(
            "SELECT p.proname, p.proconfig FROM pg_proc p"
            " WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'rc\\_%'"
        ).fetchall()
    assert configs
    assert dict(configs) == {name: ["search_path=pg_catalog, pg_temp"] for name, _ in configs}


@pytest.mark.parametrize("schema", ["public", "rc"])
def test_pg_setup_refuses_a_schema_others_can_create_in(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole], schema: str
) -> None:
    """pg-setup names the REVOKE that fixes a writable schema, and works once it has run."""
    role = pg_role()
    with _connect(pg_empty_dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("GRANT CREATE ON SCHEMA {} TO PUBLIC, {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    result = _pg_setup("--yes", "--dsn", pg_empty_dsn, "--schema", schema)
    assert result.exit_code == 1, result.output
    fix = f'REVOKE CREATE ON SCHEMA "{schema}" FROM PUBLIC, {role};'
    assert fix in result.stderr
    with _connect(pg_empty_dsn) as conn:
        assert _one(conn, "SELECT to_regclass(%s)", f"{schema}.rc_circuit_breakers") == (None,)
        conn.execute(fix)
    result = _pg_setup("--yes", "--dsn", pg_empty_dsn, "--schema", schema)
    assert result.exit_code == 0, result.output


def test_pg_setup_refuses_to_upgrade_a_schema_that_became_writable(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """An installed schema opened to another role is refused too, even for a grant only."""
    role, app = pg_role(), pg_role()
    with _connect(pg_dsn) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    result = _pg_setup("--yes", "--dsn", pg_dsn, "--app-role", app)
    assert result.exit_code == 1, result.output
    assert f'REVOKE CREATE ON SCHEMA "public" FROM {role};' in result.stderr


# ------------------------------------------------------------------------ namespaces


@pytest.fixture
def tenants(pg_dsn: str) -> None:
    """An OPEN breaker in tenant_b and a CLOSED one in tenant_a, made by the owner."""
    with _connect(pg_dsn) as conn:
        conn.execute("SELECT * FROM rc_configure('pay', 'tenant_b', 1, 1, 1, NULL, NULL, '1h')")
        conn.execute("SELECT * FROM rc_force('pay', 'OPEN', 'tenant_b')")
        conn.execute("SELECT * FROM rc_record('pay', true, 'tenant_a')")


def _tenant_b(pg_dsn: str) -> tuple[Any, ...]:
    with _connect(pg_dsn) as conn:
        return _one(
            conn,
            "SELECT state, generation, cooldown, successes, failures FROM rc_circuit_breakers"
            " WHERE namespace = 'tenant_b'",
        )


@pytest.mark.usefixtures("tenants")
def test_an_app_role_cannot_read_or_change_another_namespace(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """Granted tenant_a, a role gets insufficient_privilege for every call on tenant_b."""
    role = pg_role()
    app_dsn = _app(pg_dsn, role, "tenant_a")
    before = _tenant_b(pg_dsn)
    with _connect(app_dsn) as app:
        for statement in (
            "SELECT * FROM rc_try_acquire('pay', 'tenant_b')",
            "SELECT * FROM rc_record('pay', true, 'tenant_b')",
            "SELECT * FROM rc_record_many('pay', 'tenant_b', '{t,t}', NULL)",
            "SELECT * FROM rc_configure('pay', 'tenant_b', 1, 1, 1, NULL, NULL, '100 days')",
            "SELECT * FROM rc_force('pay', 'CLOSED', 'tenant_b')",
            "SELECT * FROM rc_reset('pay', 'tenant_b')",
            "SELECT * FROM rc_status('pay', 'tenant_b')",
            "SELECT * FROM rc_try_acquire('new', 'tenant_c')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                app.execute(statement)
            assert f"role {role} may not use namespace" in str(caught.value), statement
        # Its own namespace works, and the status view shows nothing else.
        assert _one(app, "SELECT * FROM rc_record('pay', false, 'tenant_a')") == ("OPEN", 1)
        rows = app.execute("SELECT namespace, resource_key FROM rc_circuit_breaker_status")
        assert rows.fetchall() == [("tenant_a", "pay")]
    assert _tenant_b(pg_dsn) == before


@pytest.mark.usefixtures("tenants")
def test_a_leaky_function_in_a_query_sees_no_other_namespace(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """The status view is a security barrier: a caller's own condition runs after its filter."""
    app_dsn = _app(pg_dsn, pg_role(), "tenant_a")
    leaked: list[str] = []
    with _connect(app_dsn) as app:
        app.add_notice_handler(lambda notice: leaked.append(notice.message_primary or ""))
        # Any role may create temporary functions; a cheap one would run first if it could.
        app.execute(
            "CREATE FUNCTION pg_temp.leak(text, text) RETURNS boolean LANGUAGE plpgsql"
            " COST 0.0001 AS $$ BEGIN RAISE NOTICE 'saw %/%', $1, $2; RETURN true; END $$"
        )
        rows = app.execute(
            "SELECT namespace FROM rc_circuit_breaker_status"
            " WHERE pg_temp.leak(namespace::text, resource_key::text)"
        ).fetchall()
    assert rows == [("tenant_a",)]
    assert leaked == ["saw tenant_a/pay"]


@pytest.mark.usefixtures("tenants")
def test_the_star_grants_every_namespace_and_the_owner_keeps_all(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """'*' reaches every namespace; the owner (a superuser here) needs no grant at all."""
    app_dsn = _app(pg_dsn, pg_role(), "*")
    with _connect(app_dsn) as app:
        assert _one(app, "SELECT state FROM rc_status('pay', 'tenant_b')") == ("OPEN",)
        app.execute("SELECT * FROM rc_record('x', true, 'anything')")
        assert len(app.execute("SELECT * FROM rc_circuit_breaker_status").fetchall()) == 3
    with _connect(pg_dsn) as conn:
        assert len(conn.execute("SELECT * FROM rc_circuit_breaker_status").fetchall()) == 3


def test_pg_setup_namespace_option_grants_exactly_and_says_so(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """--namespace is repeatable and exact; without it a new role gets 'default' only."""
    role, fresh = pg_role(), pg_role()
    both = _pg_setup("--yes", "--dsn", pg_dsn, "--app-role", role, "-y", *_ns("a", "b"))
    assert both.exit_code == 0, both.output
    assert f"Role '{role}' may use namespaces: 'a', 'b'." in both.stdout
    narrowed = _pg_setup("--yes", "--dsn", pg_dsn, "--app-role", role, *_ns("c"))
    assert f"Role '{role}' may use namespaces: 'c'." in narrowed.stdout
    kept = _pg_setup("--yes", "--dsn", pg_dsn, "--app-role", role)
    assert f"Role '{role}' may use namespaces: 'c'." in kept.stdout
    new = _pg_setup("--yes", "--dsn", pg_dsn, "--app-role", fresh)
    assert f"Role '{fresh}' may use namespaces: 'default'." in new.stdout
    every = _pg_setup("--yes", "--dsn", pg_dsn, "--app-role", fresh, *_ns("*"))
    assert f"Role '{fresh}' may use every namespace ('*')." in every.stdout
    assert "WARNING" in every.stderr
    dry = _pg_setup("--dry-run", "--dsn", pg_dsn, "--app-role", role, *_ns("d"))
    assert dry.exit_code == 0, dry.output
    assert "INSERT INTO" in dry.stdout
    assert "rc_namespace_grants" in dry.stdout
    lone = _pg_setup("--yes", "--dsn", pg_dsn, *_ns("a"))
    assert lone.exit_code == 2
    assert "--namespace needs --app-role" in lone.output


def _ns(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--namespace", name)]


# ------------------------------------------------------------------ bounded settings


@pytest.mark.parametrize(
    ("cooldown", "half_open_timeout", "parameter"),
    [
        ("100000 years", "10 s", "p_cooldown"),
        ("366 days", "10 s", "p_cooldown"),
        ("1 mon", "10 s", "p_cooldown"),
        ("-1 s", "10 s", "p_cooldown"),
        ("1 h", "1 mon -29 days", "p_half_open_timeout"),
        ("1 h", "365 days 1 microsecond", "p_half_open_timeout"),
        ("1 h", "0", "p_half_open_timeout"),
        ("1 h", "1 day -86401 seconds", "p_half_open_timeout"),
    ],
)
def test_configure_refuses_durations_out_of_bounds(
    pg_dsn: str, cooldown: str, half_open_timeout: str, parameter: str
) -> None:
    """Negative, month-bearing or over-365-day durations raise 22023 naming the parameter."""
    with _connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            conn.execute(
                "SELECT * FROM rc_configure('k', 'default', 1, 1, 1, NULL, NULL, %s, %s)",
                [cooldown, half_open_timeout],
            )
        assert f"rc: {parameter} must be" in str(caught.value)
        assert _one(conn, "SELECT count(*) FROM rc_circuit_breakers") == (0,)


def test_the_longest_settings_never_make_a_later_call_overflow(pg_dsn: str) -> None:
    """At 365 days of cooldown and half-open timeout, every function still answers."""
    with _connect(pg_dsn) as conn:
        conn.execute(
            "SELECT * FROM rc_configure('k', 'default', 1, 1, 1, NULL, NULL,"
            " '365 days', '365 days')"
        )
        assert _one(conn, "SELECT * FROM rc_record('k', false)") == ("OPEN", 1)
        permitted, state, _, retry_after = _one(conn, "SELECT * FROM rc_try_acquire('k')")
        assert (permitted, state) == (False, "OPEN")
        assert timedelta(days=364) < retry_after <= timedelta(days=365)
        conn.execute("SELECT * FROM rc_force('k', 'HALF_OPEN')")
        assert _one(conn, "SELECT permitted FROM rc_try_acquire('k')") == (True,)
        assert _one(conn, "SELECT permits FROM rc_status('k')") == (1,)
        conn.execute("SELECT * FROM rc_force('k', 'OPEN')")
        assert _one(conn, "SELECT state FROM rc_circuit_breaker_status") == ("OPEN",)


# ------------------------------------------------------------------- bounded rows


def _age(pg_dsn: str, key: str, namespace: str, age: str) -> None:
    with _connect(pg_dsn) as conn:
        conn.execute(
            "UPDATE rc_circuit_breakers SET updated_at = now() - %s::interval"
            " WHERE resource_key = %s AND namespace = %s",
            [age, key, namespace],
        )


def test_gc_deletes_only_idle_closed_breakers_of_the_callers_namespaces(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """rc_gc counts what it deleted: idle CLOSED rows in granted namespaces, nothing else."""
    app_dsn = _app(pg_dsn, pg_role(), "a")
    with _connect(pg_dsn) as conn:
        for key, namespace, success in [
            ("idle", "a", True),
            ("busy", "a", True),
            ("tripped", "a", False),
            ("other", "b", True),
        ]:
            conn.execute("SELECT * FROM rc_record(%s, %s, %s)", [key, success, namespace])
    for key, namespace in [("idle", "a"), ("tripped", "a"), ("other", "b")]:
        _age(pg_dsn, key, namespace, "2 hours")
    with _connect(app_dsn) as app:
        assert _one(app, "SELECT rc_gc('1 hour')") == (1,)
        assert _one(app, "SELECT rc_gc('1 hour')") == (0,)
        for idle in ("1 mon", "-1 s", "3651 days"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_idle"):
                app.execute("SELECT rc_gc(%s::interval)", [idle])
    with _connect(pg_dsn) as conn:
        left = conn.execute(
            "SELECT namespace, resource_key FROM rc_circuit_breakers ORDER BY 1, 2"
        ).fetchall()
        assert left == [("a", "busy"), ("a", "tripped"), ("b", "other")]
        assert _one(conn, "SELECT rc_gc('1 hour')") == (1,)


def test_forget_deletes_one_breaker_of_a_granted_namespace(
    pg_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """rc_forget says whether the breaker existed and refuses other namespaces."""
    app_dsn = _app(pg_dsn, pg_role(), "a")
    with _connect(pg_dsn) as conn:
        conn.execute("SELECT * FROM rc_record('k', false, 'a')")
        conn.execute("SELECT * FROM rc_record('k', false, 'b')")
    with _connect(app_dsn) as app:
        assert _one(app, "SELECT rc_forget('k', 'a')") == (True,)
        assert _one(app, "SELECT rc_forget('k', 'a')") == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT rc_forget('k', 'b')")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            app.execute("SELECT rc_forget('', 'a')")
        # Forgotten, it starts over as a fresh default breaker.
        assert _one(app, "SELECT permitted, state, generation FROM rc_try_acquire('k', 'a')") == (
            True,
            "CLOSED",
            0,
        )
    with _connect(pg_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM rc_circuit_breakers") == (1,)


# ------------------------------------------------------------------------- upgrading


def test_upgrade_keeps_app_roles_working_and_cuts_settings_to_the_bounds(
    pg_empty_dsn: str, pg_role: Callable[[], PgRole]
) -> None:
    """0003 gives roles that could call the functions '*', and bounds what 0002 accepted."""
    seed, state_machine = _installer.load_migrations()[:2]
    role = pg_role()
    with _connect(pg_empty_dsn) as conn, conn.transaction():
        conn.execute(seed.sql)
        conn.execute(state_machine.sql)
        conn.execute(
            sql.SQL(_installer._TRACKING_DDL).format(table=sql.Identifier("rc_schema_migrations"))
        )
        conn.execute("INSERT INTO rc_schema_migrations (version, name) VALUES (1, 'a'), (2, 'b')")
        conn.execute(
            "SELECT * FROM rc_configure('pay', 'tenant_b', 1, 1, 1, NULL, NULL,"
            " '100000 years', '1 mon -29 days')"
        )
        conn.execute("SELECT * FROM rc_force('pay', 'OPEN', 'tenant_b')")
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION rc_try_acquire(text, text) TO {}").format(
                sql.Identifier(role)
            )
        )
    with connect(pg_empty_dsn) as conn:
        _installer.install(conn)
        assert _installer.granted_namespaces(conn, "public", role) == ["*"]
        cooldown, half_open_timeout, hold = _one(
            conn,
            "SELECT cooldown, half_open_timeout, open_until - now() FROM rc_circuit_breakers",
        )
    assert (cooldown, half_open_timeout) == (timedelta(days=365), timedelta(days=1))
    assert timedelta(days=364) < hold <= timedelta(days=365)
    with _connect(role.dsn(pg_empty_dsn)) as app:
        assert _one(app, "SELECT permitted, state FROM rc_try_acquire('pay', 'tenant_b')") == (
            False,
            "OPEN",
        )


@pytest.mark.parametrize(
    "duration",
    [
        timedelta(0),
        timedelta(microseconds=1),
        timedelta(days=365),
        timedelta(days=365, microseconds=1),
        timedelta(days=-1),
        timedelta.max,
        timedelta.min,
    ],
)
def test_python_and_sql_accept_the_same_durations(pg_dsn: str, duration: timedelta) -> None:
    """A duration the policy refuses (ValueError naming it) is one rc_configure refuses."""
    for name in ("cooldown", "half_open_timeout"):
        try:
            Config.build(**{name: duration})
        except ValueError as exc:
            assert f"`{name}` must be" in str(exc)
            python_accepts = False
        else:
            python_accepts = True
        settings = {"cooldown": timedelta(0), "half_open_timeout": timedelta(seconds=1)}
        settings[name] = duration
        with _connect(pg_dsn) as conn:
            try:
                conn.execute(
                    "SELECT * FROM rc_configure('k', 'default', 1, 1, 1, NULL, NULL, %s, %s)",
                    [settings["cooldown"], settings["half_open_timeout"]],
                )
            except (psycopg.errors.InvalidParameterValue, psycopg.errors.IntervalFieldOverflow):
                sql_accepts = False
            else:
                sql_accepts = True
        assert python_accepts == sql_accepts, (name, duration)
