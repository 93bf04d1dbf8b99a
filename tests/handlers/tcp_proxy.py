"""A TCP proxy that tests switch off and on, cut, or stall, to fail the link to a server.

- `stop` closes the listener and drops every connection (the server seems gone);
- `cut` drops the connections but keeps listening (a reset link; clients reconnect at once);
- `stall` stops forwarding in both directions for a while, connections open (a hung link or
  a stopped-the-world server); what was sent meanwhile arrives afterwards, in order.
"""

from __future__ import annotations

import asyncio
import contextlib

from worker.redis_server import free_port


class Proxy:
    """Forwards 127.0.0.1:`port` to `target_port` while started."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Cut the connections before waiting: since Python 3.12, wait_closed() also waits
        # for every connection the server accepted.
        await self.cut()
        if server is not None:
            await server.wait_closed()

    async def cut(self) -> int:
        """Drop every open connection (both sides see it closed); returns how many pipes."""
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        return len(pipes)

    async def stall(self, seconds: float) -> None:
        """Hold every byte in both directions for `seconds`, then forward what queued up."""
        self._flowing.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.close()
            with contextlib.suppress(Exception):
                await dst.wait_closed()
