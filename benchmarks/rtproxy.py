"""A TCP proxy that counts round trips, for "round trips per call".

Usage: ``python rtproxy.py TARGET_HOST TARGET_PORT``. It listens on an ephemeral
loopback port and prints that port on the first line of stdout; then, for each line
read on stdin, it prints a JSON snapshot of its counters. It ends when stdin closes.

A round trip is counted each time the server starts answering after the client has
spoken: a turn of the conversation from client to server and back. This is
protocol-agnostic (the PostgreSQL wire protocol, RESP, TLS alike), counts a
pipelined batch as one round trip, and ignores one-way messages such as a
connection's final Terminate. Nothing is parsed, so nothing depends on a driver.
Standard library only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading

counters = {"connections": 0, "round_trips": 0, "client_bytes": 0, "server_bytes": 0}
# Round trips by connection, numbered from 1 in the order they were accepted: tells a
# call's own questions from a connection being set up (a pool's, a LISTEN thread's).
per_connection: dict[int, int] = {}


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    turn: list[str],
    side: str,
    number: int,
) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if side == "server":
                # Counted before forwarding: by the time the client sees the answer,
                # the counter already includes it, so a snapshot is never behind.
                if turn[0] != "server":
                    counters["round_trips"] += 1
                    per_connection[number] = per_connection.get(number, 0) + 1
                counters["server_bytes"] += len(data)
            else:
                counters["client_bytes"] += len(data)
            turn[0] = side
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def main() -> None:
    target_host, target_port = sys.argv[1], int(sys.argv[2])

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        counters["connections"] += 1
        number = counters["connections"]
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        turn = ["none"]
        try:
            await asyncio.gather(
                _pump(client_r, server_w, turn, "client", number),
                _pump(server_r, client_w, turn, "server", number),
            )
        except asyncio.CancelledError:
            pass  # shutting down with connections still open: nothing to report

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        done = asyncio.get_running_loop().create_future()

        def control() -> None:
            # Counters are read from this thread; ints under the GIL are safe to read.
            for _line in sys.stdin:
                snapshot = dict(counters, per_connection=dict(per_connection))
                sys.stdout.write(json.dumps(snapshot) + "\n")
                sys.stdout.flush()
            loop.call_soon_threadsafe(done.set_result, None)

        loop = asyncio.get_running_loop()
        threading.Thread(target=control, daemon=True).start()
        async with server:
            await done

    asyncio.run(serve())


if __name__ == "__main__":
    main()
