"""The test proxy cuts and stalls links on request (the chaos suite relies on both)."""

from __future__ import annotations

import asyncio

import pytest

from tests.handlers.tcp_proxy import Proxy
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"PING\r\n")
    await writer.drain()


class TestProxy:
    async def test_cut_closes_the_link_and_keeps_listening(self, redis_server: RedisServer) -> None:
        """After a cut the client sees its connection closed, and a new one works."""
        proxy = Proxy(redis_server.port)
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await ping(reader, writer)
            assert await reader.readline() == b"+PONG\r\n"
            assert await proxy.cut() == 2
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await ping(reader, writer)
            assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"
            writer.close()
        finally:
            await proxy.stop()

    async def test_stall_holds_bytes_then_delivers_them(self, redis_server: RedisServer) -> None:
        """During a stall nothing comes back; afterwards the held reply arrives, in order."""
        proxy = Proxy(redis_server.port)
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            stall = asyncio.create_task(proxy.stall(1.0))
            await asyncio.sleep(0)
            await ping(reader, writer)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readline(), 0.3)
            await stall
            assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"
            writer.close()
        finally:
            await proxy.stop()
