"""Whether a connection that waited idle in a pool was ended meanwhile.

A database restart or failover, ``pg_terminate_backend``, or a proxy that drops idle
connections ends every connection a pool holds, and nothing tells the pool: the next
statement on each would fail, and be handled as a storage outage although the server
answers again. Before a connection leaves the pool it is checked here, with one poll
of its socket that does not wait (no round trip).

The check is exact for what it looks at: between two statements the server sends an
idle client connection nothing unless it was asked to (``LISTEN``: the store's
connections never listen, its ``LISTEN`` connection is opened apart, in ``notify``; a
session setting that changes is reported in the reply to the statement that changed
it; a connection lent to the application comes back through ``DISCARD ALL``, which
ends its ``LISTEN``, except from an event loop's pool, where one still listening is
merely replaced). A socket that can be read has therefore received the server's termination notice
(``FATAL``, admin shutdown), an end of file, or some message nobody waits for: the
connection is replaced in every case, which costs a new connection on a rare path
only, and never sends a statement twice.

Through PgBouncer in transaction mode the socket is PgBouncer's, which does not talk
to an idle client either: a PostgreSQL restart behind it leaves the client's
connection usable (PgBouncer connects to the server again for the next transaction),
and a readable socket means PgBouncer itself ended the connection (restart,
``client_idle_timeout``, ``KILL``), which the check catches the same way.

Not caught: a host that vanished without closing its sockets (network partition,
power loss) sends nothing, so the statement runs into its timeout, a genuine outage.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg import pq

__all__ = ("ended_while_idle",)

_OK = pq.ConnStatus.OK

if hasattr(select, "poll"):
    _READ = select.POLLIN | select.POLLERR | select.POLLHUP

    def _readable(fd: int) -> bool:
        poller = select.poll()
        poller.register(fd, _READ)
        return bool(poller.poll(0))

else:  # pragma: no cover - Windows has no poll; select takes sockets there

    def _readable(fd: int) -> bool:
        return bool(select.select((fd,), (), (), 0)[0])


def ended_while_idle(conn: Any) -> bool:
    """Whether the idle ``conn`` (sync or async) cannot take a statement as it is."""
    pgconn = conn.pgconn
    if pgconn.status != _OK:
        return True  # closed, or seen broken already
    try:
        return _readable(pgconn.socket)
    except (OSError, ValueError, psycopg.OperationalError):  # pragma: no cover - socket gone
        return True
