"""The fan-out scenario's floor on this machine: no server can do better than this.

    .venv/bin/python -m bench.fanout_floor [--consumers 1000] [--runs 5]

A stand-in server process (plain blocking sockets, no HTTP parsing, no event loop)
accepts N keep-alive connections, reads one long-poll request on each, then sends
one canned ~200-byte HTTP response to every connection in a tight loop. The bench's
own asyncio generator (`bench.aioclient.HttpConnection`, uvloop) timestamps each
arrival exactly as scenario d does. Reported: how long the bare `send` loop took,
and the median, p99 and last arrival after the first send, medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import time
from multiprocessing.queues import Queue

from bench.aioclient import HttpConnection
from bench.procs import LOOPBACK
from bench.scenarios.common import percentile, run_async

BODY = (
    b'{"changes":[{"_id":5,"_ts":1763700000000000000,"data":{"user":"u-0001234",'
    b'"action":"update","field":"email","value":"someone@example.com","pad":"xxxxxxx"}}],'
    b'"atStart":false,"atEnd":true}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Date: Fri, 21 Nov 2026 12:00:00 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n"
    % len(BODY)
) + BODY
TIMEOUT_S = 30.0


def _serve(consumers: int, ports: Queue[int], sends: Queue[tuple[float, float]]) -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(consumers + 16)
        ports.put(listener.getsockname()[1])
        connections = []
        for _ in range(consumers):
            connection, _ = listener.accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(TIMEOUT_S)
            connections.append(connection)
        for connection in connections:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
        time.sleep(0.3)  # every consumer is waiting for its answer
        started = time.perf_counter()
        for connection in connections:
            connection.send(RESPONSE)
        sends.put((started, time.perf_counter()))
        time.sleep(1.0)  # let the generator read before the sockets close
        for connection in connections:
            connection.close()


async def _consume(port: int, consumers: int) -> list[float]:
    loop = asyncio.get_running_loop()
    connections: list[HttpConnection] = []
    for _ in range(consumers):
        _, connection = await loop.create_connection(lambda: HttpConnection(port), LOOPBACK, port)
        connections.append(connection)
    answers = [c.send(c.build("GET", "/changes?since=4&limit=100&block=30")) for c in connections]
    await asyncio.wait(answers, timeout=TIMEOUT_S)
    for connection in connections:
        connection.close()
    return [connection.response_at for connection in connections]


def one_run(consumers: int) -> dict[str, float]:
    ports: Queue[int] = multiprocessing.Queue()
    sends: Queue[tuple[float, float]] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(consumers, ports, sends))
    server.start()
    try:
        arrivals = run_async(_consume(ports.get(timeout=TIMEOUT_S), consumers), TIMEOUT_S * 2)
        started, finished = sends.get(timeout=TIMEOUT_S)
    finally:
        server.join(TIMEOUT_S)
    after_ms = [(arrival - started) * 1000 for arrival in arrivals]
    return {
        "send loop ms": (finished - started) * 1000,
        "median arrival ms": statistics.median(after_ms),
        "p99 arrival ms": percentile(after_ms, 0.99),
        "last arrival ms": max(after_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    runs = [one_run(arguments.consumers) for _ in range(arguments.runs)]
    print(f"{arguments.consumers} consumers, {arguments.runs} runs (median, min-max):")
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"  {name}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
