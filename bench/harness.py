"""What every benchmark shares: filling streams, running contenders, and timing them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
FILL_CHUNK = 5_000


def payload(i: int) -> bytes:
    """About 120 bytes of JSON, different for every entry."""
    body = {
        "order_id": f"ord-{i:09d}",
        "customer_id": f"cus-{i % 100_000:06d}",
        "amount_cents": 1000 + i % 90_000,
        "currency": "EUR",
        "status": "paid",
        "items": 1 + i % 7,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def entry(i: int, keys: int = 10_000) -> dict[bytes, bytes]:
    """A convention-following entry: type, key, data."""
    return {b"type": b"order.paid", b"key": b"order-%d" % (i % keys), b"data": payload(i)}


def fill(redis: Redis, stream: str, count: int) -> str:
    """Append `count` entries to `stream` in pipelined chunks; return the last id."""
    last = b""
    for start in range(0, count, FILL_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(start + FILL_CHUNK, count)):
            pipe.xadd(stream, entry(i))  # type: ignore[arg-type]
        last = pipe.execute()[-1]
    return last.decode()


@dataclass
class Streams:
    """Pre-filled streams by size, each read by a fresh group per contender."""

    redis: Redis
    prefix: str = field(default_factory=lambda: "bench:" + uuid.uuid4().hex[:6])
    by_size: dict[int, tuple[str, str]] = field(default_factory=dict)

    def get(self, count: int) -> tuple[str, str]:
        """(stream, last id) of a stream holding exactly `count` entries."""
        if count not in self.by_size:
            stream = f"{self.prefix}:{count}"
            self.by_size[count] = (stream, fill(self.redis, stream, count))
        return self.by_size[count]

    def new_group(self, stream: str) -> str:
        group = "g-" + uuid.uuid4().hex[:8]
        self.redis.xgroup_create(stream, group, id="0")
        return group

    def drop(self) -> None:
        for stream, _ in self.by_size.values():
            self.redis.delete(stream)
        self.by_size.clear()


class Contender:
    """A contender subprocess: started, told to go, stopped with SIGTERM."""

    def __init__(self, args: Sequence[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.contender", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise RuntimeError(f"contender {args[0]} did not start: {line!r}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def group_done(redis: Redis, stream: str, group: str, last_id: str) -> bool:
    """True once the group has read up to `last_id` and has nothing pending."""
    for info in redis.xinfo_groups(stream):
        if _text(info["name"]) == group:
            return bool(int(info["pending"]) == 0 and _text(info["last-delivered-id"]) == last_id)
    return False


def wait_done(
    redis: Redis, stream: str, group: str, last_id: str, timeout: float, poll: float = 0.002
) -> float:
    """Block until the group is done; return the time.perf_counter() at which it was seen."""
    deadline = time.perf_counter() + timeout
    while not group_done(redis, stream, group, last_id):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"group {group} not done within {timeout}s")
        time.sleep(poll)
    return time.perf_counter()


def timed_run(
    redis: Redis,
    streams: Streams,
    count: int,
    contender_args: Sequence[str],
    processes: int = 1,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Consume a fresh group over a `count`-entry stream; return seconds and msg/s."""
    stream, last_id = streams.get(count)
    group = streams.new_group(stream)
    procs = [
        Contender(
            [
                *contender_args[:1],
                "--url", _url(redis), "--stream", stream, "--group", group,
                "--consumer", f"bench-{n}", *contender_args[1:],
            ]
        )
        for n in range(processes)
    ]  # fmt: skip
    try:
        cpu_before = sum(cpu_seconds(proc.process.pid) for proc in procs)
        started = time.perf_counter()
        for proc in procs:
            proc.go()
        finished = wait_done(redis, stream, group, last_id, timeout)
        cpu = sum(cpu_seconds(proc.process.pid) for proc in procs) - cpu_before
    finally:
        for proc in procs:
            proc.stop()
    redis.xgroup_destroy(stream, group)
    seconds = finished - started
    return {"entries": count, "seconds": seconds, "rate": count / seconds, "cpu_s": cpu}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _url(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
