"""Production process shapes, run in a fresh interpreter: ``python -m tests._process_run
SCENARIO``. Prints one JSON object (what every process saw) on stdout.

- ``fork``: the parent calls (opening its pool, LISTEN and flusher), then ``os.fork()``
  four children that call 50 times each; child 0 then trips the breaker and the others
  must see it; the parent goes on working afterwards.
- ``pool``: a ``multiprocessing`` pool with the fork start method maps calls.
- ``prefork``: a pre-forking server (gunicorn ``--preload``): the master imports the
  application and forks workers that serve requests from one listening socket.

Every child and worker reports the log records of WARNING and above it saw, so a
test can tell "it worked" from "it limped along logging errors".
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

from resilient_circuit import ProtectedCallError

from . import _process_app as app

CHILDREN = 4
CALLS = 50


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def _collect_logs() -> _Collect:
    handler = _Collect()
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Collect):
            root.removeHandler(old)
    root.addHandler(handler)
    return handler


def _call(ok: bool = True) -> str:
    try:
        return app.handle(ok)
    except ProtectedCallError:
        return "rejected"
    except app.DependencyDown:
        return "failed"


def _until_rejected(deadline: float) -> list[str]:
    """Call until the breaker rejects; every outcome, the rejection last."""
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen.append(_call())
        if seen[-1] == "rejected":
            break
        time.sleep(0.01)
    return seen


# ---------------------------------------------------------------------------- fork


def _fork_child(index: int, out: int, done: tuple[int, int]) -> None:
    logs = _collect_logs()
    results = [_call() for _ in range(CALLS)]
    report: dict[str, Any] = {"index": index, "pid": os.getpid(), "calls": results}
    if index == 0:
        # Trip only once every other child has made its calls.
        os.close(done[1])
        received = b""
        while len(received) < CHILDREN - 1:
            chunk = os.read(done[0], CHILDREN)
            if not chunk:
                break
            received += chunk
        report["trip"] = _call(ok=False)
    else:
        os.write(done[1], b"x")
        report["saw_trip"] = _until_rejected(time.monotonic() + 15)
    app.protector.storage.flush()  # type: ignore[attr-defined]
    report["logs"] = logs.lines
    os.write(out, (json.dumps(report) + "\n").encode())


def scenario_fork() -> dict[str, Any]:
    logs = _collect_logs()
    before = [_call() for _ in range(5)]  # pool, LISTEN and flusher are up now
    store = app.protector.storage
    if os.environ.get("APP_ADMISSION") == "cached":
        assert store.wait_listening(10)  # type: ignore[attr-defined]
    read, write = os.pipe()
    done = os.pipe()
    pids = []
    for index in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read)
                _fork_child(index, write, done)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(write)
    os.close(done[0])
    os.close(done[1])
    children = _wait_all(pids, time.monotonic() + 60)
    with os.fdopen(read) as lines:
        reports = [json.loads(line) for line in lines]
    after = [_call() for _ in range(5)]
    snapshot = app.protector.snapshot()
    store.flush()  # type: ignore[attr-defined]
    return {
        "exit_codes": children,
        "children": sorted(reports, key=lambda r: r["index"]),
        "parent": {
            "before": before,
            "after": after,
            "state": snapshot.state.name,
            "logs": logs.lines,
        },
    }


def _wait_all(pids: list[int], deadline: float) -> list[int | None]:
    """Exit codes, None for a child still running at the deadline (then killed)."""
    codes: dict[int, int | None] = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid in codes:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[pid] = None
    return [codes[pid] for pid in pids]


# ---------------------------------------------------------------------------- pool


def _pool_task(n: int) -> tuple[int, list[str], list[str]]:
    logs = _collect_logs()
    results = [_call() for _ in range(5)]
    return os.getpid(), results, logs.lines


def scenario_pool() -> dict[str, Any]:
    logs = _collect_logs()
    before = [_call() for _ in range(3)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(CHILDREN) as pool:
        outcome = pool.map_async(_pool_task, range(40))
        rows = outcome.get(timeout=60)
    after = [_call() for _ in range(3)]
    return {
        "pids": sorted({pid for pid, _, _ in rows}),
        "calls": [c for _, calls, _ in rows for c in calls],
        "logs": [line for _, _, lines in rows for line in lines],
        "parent": {"before": before, "after": after, "logs": logs.lines},
    }


# ---------------------------------------------------------------------------- prefork


def _serve(listener: socket.socket) -> None:
    """A worker: one request per connection, ``ok`` or ``fail``; replies outcome + pid."""
    logs = _collect_logs()
    while True:
        conn, _ = listener.accept()
        with conn:
            request = conn.makefile().readline().strip()
            if request == "logs":
                reply = json.dumps(logs.lines)
            else:
                reply = f"{_call(ok=request != 'fail')} {os.getpid()}"
            conn.sendall((reply + "\n").encode())


def scenario_prefork() -> dict[str, Any]:
    """The master never calls: it only imported the application (``--preload``)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    workers = []
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            try:
                _serve(listener)
            finally:
                os._exit(1)
        workers.append(pid)
    listener.close()
    print(json.dumps({"port": port, "workers": workers}), flush=True)
    # The test talks to the workers, then closes our stdin to end the server.
    sys.stdin.read()
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    codes = _wait_all(workers, time.monotonic() + 10)
    return {"stopped": codes}


SCENARIOS = {"fork": scenario_fork, "pool": scenario_pool, "prefork": scenario_prefork}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()), flush=True)
