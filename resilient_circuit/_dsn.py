"""Connection strings hold passwords: parse them once, and never let one be printed.

libpq echoes a malformed URI verbatim in its error message, and psycopg's pool logs
every failed reconnect at WARNING with that message. So a DSN is checked when a store
or a command is built (the error names the parameter and hides the password), the
password travels apart from the rest of the connection string, and the pool's log
records are scrubbed of every password a store of this process uses.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ("MASK", "Dsn", "redact")

MASK = "********"

# The password of a URI (scheme://user:password@host) and of key=value strings
# (password=secret, password = 'it''s'), found even when libpq cannot parse the rest;
# sslpassword (the passphrase of the client certificate's key) alike.
_URI_PASSWORD = re.compile(r"(?P<head>://[^:/?#@\s]*:)(?P<secret>[^@/?#]*)(?=@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<secret>[^&#\s]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>(?<![?&])\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:\\.|[^'\\])*'|[^\s']+)",
    re.IGNORECASE,
)
_PATTERNS = (_URI_PASSWORD, _QUERY_PASSWORD, _KEYWORD_PASSWORD)


def redact(text: str, *secrets: str) -> str:
    """``text`` with every password-looking part and each of ``secrets`` masked."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m["head"] + MASK, text)
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def _secrets_in(dsn: str) -> list[str]:
    """The raw password texts ``dsn`` spells out, parseable or not."""
    found = [m["secret"] for pattern in _PATTERNS for m in pattern.finditer(dsn)]
    return [s for s in found if s]


def _masks_password(shown: str) -> bool:
    """Whether the password ``shown`` would connect with is the mask itself."""
    try:
        return conninfo_to_dict(shown).get("password") == MASK
    except ProgrammingError:
        return False


class Dsn:
    """A validated connection string, kept as its password-free part plus the password.

    ``str()`` and ``repr()`` show the password masked; ``connect_kwargs()`` is what a
    connection needs, the password apart from the conninfo string.
    """

    __slots__ = ("conninfo", "password", "shown")

    def __init__(self, dsn: object, name: str = "dsn") -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError(f"`{name}` must be a non-empty connection string")
        try:
            params = conninfo_to_dict(dsn)
        except ProgrammingError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparseable"
            raise ValueError(
                f"`{name}` is not a valid connection string: {redact(reason, *_secrets_in(dsn))}"
            ) from None
        _check_ports(params.get("port"), name)
        _check_sslmode(params.get("sslmode"), name)
        password = params.pop("password", None)
        self.password: str | None = None if password is None else str(password)
        self.conninfo: str = make_conninfo("", **params)
        # The patterns mask the password where it stands; masking every occurrence of
        # its text as well would also garble a user or database name that contains it
        # (user=test password=test). That blunt pass is kept for what they miss.
        shown = redact(dsn)
        if self.password is not None and not _masks_password(shown):
            shown = redact(dsn, *_secrets_in(dsn), self.password)
        self.shown: str = shown
        if self.password:
            _scrubber.add(self.password)

    def connect_kwargs(self) -> dict[str, Any]:
        """The password for ``psycopg.connect(self.conninfo, **kwargs)``, if there is one."""
        return {} if self.password is None else {"password": self.password}

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"Dsn({self.shown!r})"


def _check_ports(port: object, name: str) -> None:
    # libpq checks the port only when it connects, and then echoes the whole connection
    # string in its message: checked here, it fails once, at construction.
    if port is None or port == "":
        return
    for part in str(port).split(","):
        part = part.strip()
        if part and not (part.isascii() and part.isdigit() and 1 <= int(part) <= 65535):
            shown = part if len(part) <= 20 else part[:20] + "..."
            raise ValueError(
                f"`{name}` is not a valid connection string: port must be a number from 1 to "
                f"65535, got {shown!r}"
            )


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_sslmode(sslmode: object, name: str) -> None:
    # libpq too refuses an unknown sslmode only when it connects, and a readiness probe
    # would then report a server that cannot be reached.
    if sslmode is None or sslmode == "" or sslmode in SSLMODES:
        return
    shown = str(sslmode) if len(str(sslmode)) <= 20 else str(sslmode)[:20] + "..."
    raise ValueError(
        f"`{name}` is not a valid connection string: sslmode must be one of "
        f"{', '.join(SSLMODES)}, got {shown!r}"
    )


class _PasswordScrubber(logging.Filter):
    """Masks known passwords in the records of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._attached = False

    def add(self, secret: str) -> None:
        with self._lock:
            self._secrets.add(secret)
            if not self._attached:
                # psycopg's pool logs failed connection attempts with libpq's text.
                for name in ("psycopg", "psycopg.pool"):
                    logging.getLogger(name).addFilter(self)
                self._attached = True

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, *self._secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_scrubber = _PasswordScrubber()
