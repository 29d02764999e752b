"""A process that runs many event loops on one store, then closes it and exits:
``python -m tests._loops_run``, with ``RC_DB_DSN`` set. Prints one JSON object.

- ``cut_short``: loops that ``asyncio.run`` ends while their first call is still
  connecting (the pool's workers and scheduler are cancelled mid-connect);
- ``overlapping``: three threads, each ``asyncio.run``-ing four tasks, on a budget of
  three connections;
- ``closed_by_hand``: a loop closed without shutting down its async generators, whose
  pool nothing can await any more: the next loop's first call, or ``close()``, discards it.

After each phase it reports the library's sessions still open in the database, and at
the end the threads left besides the main one (none may keep the process alive).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import psycopg

from resilient_circuit import CircuitProtectorPolicy
from resilient_circuit.storage import PostgresStorage

DSN = os.environ["RC_DB_DSN"]
store = PostgresStorage(DSN, max_connections=3)
protector = CircuitProtectorPolicy(resource_key="loops", storage=store)


@protector
async def call() -> None:
    await asyncio.sleep(0.001)


def sessions() -> int:
    """The library's sessions in the database once the server has seen them end."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'resilient_circuit'"
    )
    with psycopg.connect(DSN, autocommit=True, application_name="probe") as conn:
        # A closed socket ends its backend a moment later: wait for that, boundedly.
        deadline = time.monotonic() + 10
        while True:
            row = conn.execute(query).fetchone()
            count = row[0] if row else -1
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.05)


async def cut_short(delay: float) -> None:
    started = asyncio.ensure_future(call())  # still running when the loop ends
    await asyncio.sleep(delay)
    assert not started.cancelled()


async def busy() -> None:
    async def task() -> None:
        for _ in range(30):
            await call()

    await asyncio.gather(*(task() for _ in range(4)))


def loop_closed_by_hand() -> None:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(busy())
    loop.close()


def main() -> dict[str, object]:
    report: dict[str, object] = {}
    for i in range(40):
        asyncio.run(cut_short(0.0005 * (i % 8)))
    report["cut_short"] = sessions()

    threads = [threading.Thread(target=asyncio.run, args=(busy(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report["overlapping"] = sessions()

    loop_closed_by_hand()
    report["closed_by_hand"] = sessions()
    asyncio.run(busy())  # its first call discards the closed loop's pool
    report["next_loop"] = sessions()
    loop_closed_by_hand()
    store.close()
    report["closed"] = sessions()
    report["threads"] = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    report["non_daemon"] = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    return report


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
