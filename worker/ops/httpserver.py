"""A minimal HTTP/1.1 server on the worker's event loop, for /metrics and the probes.

prometheus-client's own server runs in a thread; ours runs on the event loop so that a scrape
reads the worker's counters between two steps of the hot path, never in the middle of one,
and so that probes see exactly the state the loop sees. A worker whose loop is blocked cannot
answer either, which is what a liveness probe should notice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("worker.http")

REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
REASONS[503] = "Service Unavailable"
REASONS[500] = "Internal Server Error"


class HttpServer:
    """Serves GET (and HEAD) on a fixed set of paths.

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one (see `port` after `start`).
        routes: path -> coroutine returning the response.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            response = await self._respond(method, path)
            head = (
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + response.body)
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that went away or spoke nonsense gets nothing
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, method: str, path: str) -> Response:
        route = self.routes.get(path.partition("?")[0])
        if route is None:
            return Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        try:
            return await route()
        except Exception:
            log.exception("http.failed", path=path)
            return Response(500, b"internal error\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("headers too large")
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split()
    if len(parts) != 3:
        raise ValueError("bad request line")
    return parts[0].upper(), parts[1]
