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
    parts = {
        "host": host,
        "port": env.get("RC_DB_PORT", "").strip() or "5432",
        "dbname": env.get("RC_DB_NAME", "").strip() or "resilient_circuit_db",
        "user": env.get("RC_DB_USER", "").strip() or "postgres",
    }
    password = env.get("RC_DB_PASSWORD")
    if password:
        parts["password"] = password
    return " ".join(f"{name}={_quote(value)}" for name, value in parts.items())


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
