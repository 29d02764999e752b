"""Where the database is: ``RC_DB_DSN`` or the ``RC_DB_*`` variables, plus ``.env``.

The library and the CLI read the same settings, so ``pg-setup`` installs into
exactly the database the policies will use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_NAMESPACE = "default"
DEFAULT_SCHEMA = "public"

_dotenv_loaded = False


def load_dotenv_once() -> None:
    """Read ``.env`` (searched from the working directory up) without overriding the env."""
    global _dotenv_loaded
    if _dotenv_loaded:
        return
    _dotenv_loaded = True
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


def _quote(value: str) -> str:
    # libpq conninfo quoting: single quotes, with backslash and quote escaped.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def database_dsn(env: Mapping[str, str] | None = None) -> str | None:
    """The configured DSN, or None when no database is configured.

    ``RC_DB_DSN`` (any libpq conninfo string or URI) wins; otherwise ``RC_DB_HOST``
    switches PostgreSQL on and ``RC_DB_PORT``/``RC_DB_NAME``/``RC_DB_USER``/
    ``RC_DB_PASSWORD`` fill in the rest with 0.4.5's defaults.
    """
    if env is None:
        load_dotenv_once()
        env = os.environ
    dsn = env.get("RC_DB_DSN", "").strip()
    if dsn:
        return dsn
    host = env.get("RC_DB_HOST", "").strip()
    if not host:
        return None
    port = env.get("RC_DB_PORT", "").strip() or "5432"
    # Checked here, where the variable is known: the connection string built from the
    # parts would be refused later under the name `dsn`, which the user never set.
    for part in port.split(","):
        if not (part.isascii() and part.strip().isdigit() and 1 <= int(part) <= 65535):
            raise ValueError(
                f"`RC_DB_PORT` must be a port number from 1 to 65535, got {part.strip()[:20]!r}"
            )
    parts = {
        "host": host,
        "port": port,
        "dbname": env.get("RC_DB_NAME", "").strip() or "resilient_circuit_db",
        "user": env.get("RC_DB_USER", "").strip() or "postgres",
    }
    password = env.get("RC_DB_PASSWORD")
    if password:
        parts["password"] = password
    parts.update(_tls_parameters(env))
    return " ".join(f"{name}={_quote(value)}" for name, value in parts.items())


# libpq's, as resilient_circuit._dsn checks them (kept here: that module needs psycopg).
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# 0.8.6's TLS variables, each a libpq parameter of the same name.
_TLS_VARIABLES = {
    "RC_DB_SSLMODE": "sslmode",
    "RC_DB_SSLROOTCERT": "sslrootcert",
    "RC_DB_SSLCERT": "sslcert",
    "RC_DB_SSLKEY": "sslkey",
}


def _tls_parameters(env: Mapping[str, str]) -> dict[str, str]:
    """The ``RC_DB_SSL*`` variables that are set, as libpq parameters."""
    found = {}
    for variable, parameter in _TLS_VARIABLES.items():
        value = env.get(variable, "").strip()
        if value:
            found[parameter] = value
    sslmode = found.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise ValueError(
            f"`RC_DB_SSLMODE` must be one of {', '.join(_SSLMODES)}, got {sslmode[:20]!r}"
        )
    return found


def default_namespace(env: Mapping[str, str] | None = None) -> str:
    """``RC_NAMESPACE``, or ``"default"``."""
    if env is None:
        load_dotenv_once()
        env = os.environ
    return env.get("RC_NAMESPACE", "").strip() or DEFAULT_NAMESPACE


def database_schema(env: Mapping[str, str] | None = None) -> str:
    """``RC_DB_SCHEMA``: the schema ``pg-setup`` installed into (``public`` by default)."""
    if env is None:
        load_dotenv_once()
        env = os.environ
    return env.get("RC_DB_SCHEMA", "").strip() or DEFAULT_SCHEMA


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    if env is None:
        load_dotenv_once()
        return os.environ
    return env


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    """A boolean variable: None when unset (or ``auto``); ValueError naming it when unreadable."""
    value = env.get(name, "").strip().lower()
    if not value or value == "auto":
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"`{name}` must be 1/0, true/false, yes/no or on/off, got {value!r}")


def listen_dsn(env: Mapping[str, str] | None = None) -> str | None:
    """``RC_DB_LISTEN_DSN``: a direct connection for LISTEN when ``RC_DB_DSN`` is a pooler."""
    return _environment(env).get("RC_DB_LISTEN_DSN", "").strip() or None


def prepared_statements(env: Mapping[str, str] | None = None) -> bool | None:
    """``RC_DB_PREPARED_STATEMENTS``: 0 turns server-side prepared statements off; unset = auto."""
    return _flag(_environment(env), "RC_DB_PREPARED_STATEMENTS")


def strict_storage(env: Mapping[str, str] | None = None) -> bool:
    """``RC_DB_STRICT`` (0.8.6): a database that is configured but not usable is an error."""
    return bool(_flag(_environment(env), "RC_DB_STRICT"))


def auto_create(env: Mapping[str, str] | None = None) -> bool:
    """``RC_DB_AUTO_CREATE`` (0.8.6): install the schema on first use when it is missing."""
    return bool(_flag(_environment(env), "RC_DB_AUTO_CREATE"))
