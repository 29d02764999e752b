"""A real PgBouncer, in transaction pooling mode, in front of the suite's PostgreSQL.

Started from the ``pgbouncer`` binary on a free loopback port, with its stock
strictness (no ``ignore_startup_parameters``), and pointed at whatever server the
suite uses: the embedded one through its Unix socket, or a DSN's host and port.
PgBouncer refuses to run as root: as root it is started with ``-u``, as the owner of
the server's socket directory (which only that user may enter) or as ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ("PgBouncer", "free_port")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One PgBouncer process; ``dsn(database_dsn)`` is that database through it."""

    def __init__(self, server_dsn: str) -> None:
        binary = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
        )
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed (make test-pgbouncer installs it)")
        self.binary = binary
        server = conninfo_to_dict(server_dsn)
        self.host = str(server.get("host") or "/var/run/postgresql")
        self.server_port = str(server.get("port") or 5432)
        self.user = str(server.get("user") or pwd.getpwuid(os.getuid()).pw_name)
        self.password = str(server.get("password") or "")
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="rc-pgbouncer-")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.workdir, "pgbouncer.log")

    def _run_as(self) -> list[str]:
        if os.getuid() != 0:
            return []
        if self.host.startswith("/"):
            return ["-u", pwd.getpwuid(os.stat(self.host).st_uid).pw_name]
        return ["-u", "nobody"]

    def _write_config(self) -> str:
        # Readable by the user PgBouncer switches to.
        os.chmod(self.workdir, 0o755)
        auth_file = os.path.join(self.workdir, "users.txt")
        with open(auth_file, "w") as f:
            f.write(f"{_quote(self.user)} {_quote(self.password)}\n")
        config = os.path.join(self.workdir, "pgbouncer.ini")
        with open(config, "w") as f:
            f.write(
                "[databases]\n"
                f"* = host={self.host} port={self.server_port}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "pool_mode = transaction\n"
                "auth_type = trust\n"
                f"auth_file = {auth_file}\n"
                "max_client_conn = 500\n"
                "default_pool_size = 20\n"
            )
        for path in (auth_file, config):
            os.chmod(path, 0o644)
        return config

    def start(self, timeout: float = 15.0) -> None:
        config = self._write_config()
        log = open(self.log_path, "wb")  # noqa: SIM115 - the process writes it until stop()
        self.process = subprocess.Popen(
            [self.binary, *self._run_as(), config], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def dsn(self, database_dsn: str) -> str:
        """``database_dsn``'s database, reached through this PgBouncer."""
        dbname = conninfo_to_dict(database_dsn).get("dbname") or "postgres"
        return make_conninfo(
            host="127.0.0.1", port=str(self.port), dbname=str(dbname), user=self.user
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)
