"""A worker whose log output fails (a closed or a full stderr pipe) keeps processing and stops
on SIGTERM: log records are dropped and counted, never raised and never waited for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import pytest
from redis.asyncio import Redis

from tests.helpers import WorkerProcess, eventually, pending_count
from worker.log_output import MAX_PENDING_BYTES
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

GOOD = 5
"""Good entries each test publishes; they are processed."""


class Pipe:
    """A pipe whose ends are closed once: a closed descriptor's number is soon reused (by a
    Redis connection, say), and closing it a second time would close that instead."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.open = {self.r, self.w}

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *_: object) -> None:
        for fd in list(self.open):
            self.close(fd)


def fill(fd: int) -> int:
    """Write filler lines into the pipe until it is full; returns the bytes written."""
    os.set_blocking(fd, False)
    written = 0
    try:
        while True:
            written += os.write(fd, b"filler\n")
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    return written


def drain(fd: int) -> bytes:
    """Everything the pipe holds right now."""
    os.set_blocking(fd, False)
    out = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            out += chunk
    return bytes(out)


async def publish_and_settle(redis: Redis, stream: str, group: str, bad: int) -> None:
    """Publish GOOD good and `bad` undecodable entries (each dead-lettered with a warning
    line of some 400 bytes); wait until all are acked."""
    pipe = redis.pipeline(transaction=False)
    for n in range(GOOD):
        pipe.xadd(stream, {"type": "t", "data": json.dumps({"n": n})})
    for _ in range(bad):
        pipe.xadd(stream, {"type": "t", "data": "{not json"})
    await pipe.execute()

    async def settled() -> bool:
        return (
            await redis.llen(f"{stream}:processed") == GOOD
            and await redis.xlen(f"{stream}:dlq") == bad
            and await pending_count(redis, stream, group) == 0
        )

    await eventually(settled, timeout=10)


class TestLogOutputFailures:
    async def test_a_log_pipe_whose_reader_went_away(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """After the reader of its stderr pipe is gone (EPIPE, as in `| head -1`), the worker
        still acks and dead-letters every entry, and SIGTERM stops it with exit code 0."""
        stream, group = names["stream"], names["group"]
        with Pipe() as p:
            r = p.r
            worker = await WorkerProcess(redis_server.url, group, stream, "c-epipe").start(
                output=p.w
            )
            p.close(p.w)
            # Given: a started worker, its first lines read
            seen = bytearray()

            def started() -> bool:
                seen.extend(drain(r))
                return b'"worker.started"' in seen

            await eventually(started)
            # When: the reader goes away, then entries arrive that make the worker log
            p.close(r)
            await publish_and_settle(redis, stream, group, bad=5)
            # Then
            worker.signal(signal.SIGTERM)
            assert await worker.wait(timeout=10) == 0

    async def test_a_full_log_pipe_nobody_reads(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """With its stderr pipe full and nobody reading, the worker does not wait for room:
        it processes everything and stops on SIGTERM. Once the pipe is read again, it logs
        again, starting with how many records it dropped; no line is torn."""
        stream, group = names["stream"], names["group"]
        with Pipe() as p:
            r = p.r
            # Given: a worker whose stderr pipe is full from the start
            filler = fill(p.w)
            worker = await WorkerProcess(redis_server.url, group, stream, "c-full").start(
                output=p.w
            )
            p.close(p.w)
            # When: entries arrive, logging more than the worker queues while the pipe is full
            bad = MAX_PENDING_BYTES // 256
            await publish_and_settle(redis, stream, group, bad)
            # Then: once the pipe is read, the worker's stop is logged in full
            output = bytearray(drain(r))
            worker.signal(signal.SIGTERM)
            waiting = asyncio.create_task(worker.wait(timeout=10))
            while not waiting.done():
                output += drain(r)
                await asyncio.sleep(0.01)
            assert waiting.result() == 0
            output += drain(r)
        assert output[:filler] == b"filler\n" * (filler // len(b"filler\n"))
        lines = [json.loads(line) for line in output[filler:].splitlines()]
        events = [line["event"] for line in lines]
        assert "worker.starting" in events
        dropped = events.index("log.records_dropped")
        assert lines[dropped]["count"] > 0
        assert events[dropped - 1] == "message.dead_lettered"  # the last that fitted
        assert "worker.stopping" in events and events[-1] == "worker.stopped"
