"""The fault proxy's modes, in-process and as a subprocess, against an echo server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.support.faultproxy import FaultProxy, FaultProxyProcess
from tests.transport.harness import Node, message, run, started, stop_all, wait_until


class Echo:
    """A loopback echo server that counts what it received."""

    def __init__(self) -> None:
        self.received = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Echo:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    self.received += len(data)
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def client(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def echoed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), 10)


async def nothing_arrives(reader: asyncio.StreamReader, within_s: float = 0.2) -> bool:
    """A bounded negative check: no byte arrives within `within_s`."""
    try:
        await asyncio.wait_for(reader.read(1), within_s)
    except TimeoutError:
        return True
    return False


async def proxied() -> tuple[Echo, FaultProxy]:
    echo = await Echo().start()
    return echo, await FaultProxy("127.0.0.1:0", echo.address).start()


def test_pass_and_partition() -> None:
    async def scenario() -> None:
        echo, proxy = await proxied()
        try:
            reader, writer = await client(proxy)
            assert await echoed(reader, writer, b"hello") == b"hello"
            proxy.partition()
            writer.write(b"lost")
            await wait_until(lambda: proxy.bytes_dropped["client_to_server"] == 4)
            assert await nothing_arrives(reader)
            assert echo.received == 5
            proxy.pass_through()
            assert await echoed(reader, writer, b"again") == b"again"
            writer.close()
        finally:
            await proxy.close()
            echo.close()

    run(scenario())


def test_one_way_blocks() -> None:
    async def scenario() -> None:
        echo, proxy = await proxied()
        try:
            reader, writer = await client(proxy)
            proxy.block("server_to_client")
            writer.write(b"ping")
            await wait_until(lambda: echo.received == 4, what="the server got it")
            await wait_until(lambda: proxy.bytes_dropped["server_to_client"] == 4)
            assert await nothing_arrives(reader)
            proxy.pass_through()
            proxy.block("client_to_server")
            writer.write(b"pong")
            await wait_until(lambda: proxy.bytes_dropped["client_to_server"] == 4)
            assert echo.received == 4
            with pytest.raises(ValueError):
                proxy.block("sideways")
            writer.close()
        finally:
            await proxy.close()
            echo.close()

    run(scenario())


def test_delay_keeps_order_and_adds_latency() -> None:
    async def scenario() -> None:
        echo, proxy = await proxied()
        try:
            reader, writer = await client(proxy)
            proxy.delay(150)
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            for index in range(20):
                writer.write(b"%02d" % index)
            data = await asyncio.wait_for(reader.readexactly(40), 10)
            assert data == b"".join(b"%02d" % index for index in range(20))
            assert loop.time() - started_at >= 0.3  # 150 ms each way
            writer.close()
        finally:
            await proxy.close()
            echo.close()

    run(scenario())


def test_cut_resets_open_connections_and_accepts_new_ones() -> None:
    async def scenario() -> None:
        echo, proxy = await proxied()
        try:
            reader, writer = await client(proxy)
            assert await echoed(reader, writer, b"x") == b"x"
            proxy.cut()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 10)
            reader, writer = await client(proxy)
            assert await echoed(reader, writer, b"y") == b"y"
            writer.close()
        finally:
            await proxy.close()
            echo.close()

    run(scenario())


@pytest.mark.parametrize("address", ["10.0.0.1:80", "example.com:80", "0.0.0.0:1", "127.0.0.1:x"])
def test_only_loopback_addresses_are_accepted(address: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("127.0.0.1:0", address)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(address, "127.0.0.1:1")


def test_the_command_line_refuses_other_addresses() -> None:
    command = [sys.executable, "-m", "tests.support.faultproxy"]
    result = subprocess.run(
        [*command, "--listen", "192.168.1.1:9000", "--target", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_subprocess_controlled_over_its_control_port() -> None:
    async def scenario() -> None:
        echo = await Echo().start()
        proxy = await asyncio.to_thread(FaultProxyProcess, echo.address)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await echoed(reader, writer, b"one") == b"one"
            assert (await asyncio.to_thread(proxy.command, "partition")).startswith(
                "ok drop=client_to_server,server_to_client"
            )
            writer.write(b"two")
            assert await nothing_arrives(reader, 0.3)
            assert await asyncio.to_thread(proxy.command, "delay 20") == (
                "ok drop=client_to_server,server_to_client delay_ms=20 connections=1"
            )
            assert (await asyncio.to_thread(proxy.command, "pass")).startswith("ok drop=none")
            assert await echoed(reader, writer, b"three") == b"three"
            assert (await asyncio.to_thread(proxy.command, "jump")).startswith("error")
            assert (await asyncio.to_thread(proxy.command, "block up")).startswith("error")
            assert (await asyncio.to_thread(proxy.command, "cut")).startswith("ok")
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 10)
        finally:
            await asyncio.to_thread(proxy.stop)
            echo.close()

    run(scenario())


def test_a_peer_link_through_the_proxy_survives_a_partition() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, "tcp", addresses), Node(2, "tcp", addresses))
        proxy = await FaultProxy("127.0.0.1:0", addresses[2]).start()
        addresses[2] = proxy.address  # a reaches b only through the proxy
        del addresses[1]  # and b never dials a: the proxied link is the only one
        try:
            a.transport.send(2, message(1, 2, index=1))
            assert (await b.next_message())[1].index == 1
            proxy.partition()
            a.transport.send(2, message(1, 2, index=2))
            await wait_until(lambda: proxy.bytes_dropped["client_to_server"] > 0)
            proxy.pass_through()
            proxy.cut()  # the partition lost a frame; the link resets and reconnects
            index = 3
            while True:
                a.transport.send(2, message(1, 2, index=index))
                try:
                    _, received = await asyncio.wait_for(b.next_message(), 0.05)
                except TimeoutError:
                    index += 1
                    continue
                if received.index >= 3:
                    break
            assert a.transport.stats().peers[2].reconnects >= 1
        finally:
            await proxy.close()
            await stop_all([a, b])

    run(scenario())
