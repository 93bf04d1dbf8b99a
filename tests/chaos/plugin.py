"""The handler the chaos workers run: a strict projection that logs every run of every entry.

Effect. A well-formed event (`type=upsert`, a `key`, an integer `version`, a JSON object in
`data`) goes through the built-in projection sink (`handlers.projection`), whose Lua script
applies it at most once per (entity, version) and counts each outcome atomically beside the
effect (`applied` / `stale`). Every good event of a chaos run names its own entity at version 1,
so `applied` must end equal to the number of good events: anything above is an effect applied
twice, anything below a lost one.

Strictness. Anything else is rejected (dead-lettered at once), including what the projection
alone would accept or skip (no `data`, an unknown type): the chaos publisher's bad entries must
all end in the dead-letter stream, never acknowledged nor pending.

Work. Each run sleeps a random while (up to `$CHAOS_HANDLER_SLEEP` seconds, 0.25 by default)
before its effect, so that every worker has entries in flight when a fault strikes.

Run log. Each run writes `S <entry id> <t>` before and `E <entry id> <t> <outcome>` after it
(t: CLOCK_MONOTONIC in ns, one clock for every process on the host) to a file per process,
`$CHAOS_RUN_DIR/<consumer>.<pid>.runs`, with one unbuffered `write` per line. A file rather
than Redis because the log must survive exactly the faults under test: a SIGKILL loses no
line already written, and a Redis restart or a cut link cannot lose or fail a record.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import time
from collections import Counter
from collections.abc import Mapping

from handlers.projection import Projection
from worker import HandlerContext, Message, Reject

EVENT_TYPE = b"upsert"
PREFIX = "chaos:entity:"


def defect(raw: Mapping[bytes, bytes]) -> str | None:
    """Why an entry is not a well-formed chaos event, or None when it is one."""
    if raw.get(b"type") != EVENT_TYPE:
        return "unknown type"
    if not raw.get(b"key"):
        return "no key"
    version = raw.get(b"version", b"")
    if not version.isdigit():
        return "version is not a number"
    data = raw.get(b"data")
    if data is None:
        return "no data"
    if not (data.startswith(b"{") and data.endswith(b"}")):
        return "data is not a JSON object"
    return None


class RunLog:
    """Appends run records to one file with a `write` syscall each (no user-space buffer)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, line: str) -> None:
        os.write(self.fd, line.encode())

    def close(self) -> None:
        os.close(self.fd)


class ChaosProjection(Projection):
    """The projection sink with a strict schema and a run log; see the module docstring."""

    name = "chaos"

    def __init__(self) -> None:
        super().__init__(prefix=PREFIX, events={"upsert": "set"}, ack=False)
        self.runs: RunLog | None = None
        self.sleep = float(os.environ.get("CHAOS_HANDLER_SLEEP", "0.25"))

    async def on_startup(self, ctx: HandlerContext) -> None:
        await super().on_startup(ctx)
        directory = os.environ["CHAOS_RUN_DIR"]
        self.runs = RunLog(os.path.join(directory, f"{ctx.consumer}.{os.getpid()}.runs"))

    async def on_shutdown(self) -> None:
        if self.runs is not None:
            self.runs.close()

    async def handle(self, msg: Message) -> None:
        reason = defect(msg.raw)
        if reason is not None:
            raise Reject(reason)
        assert self.runs is not None, "on_startup was not called"
        self.runs.write(f"S {msg.id} {time.monotonic_ns()}\n")
        outcome = "error"
        try:
            await asyncio.sleep(random.uniform(0, self.sleep))
            # A copy per message with its own counter: the outcome of this very run, even
            # while other messages of this process run concurrently.
            sink = copy.copy(self)
            sink.counts = Counter()
            await Projection.handle(sink, msg)
            outcome = next(iter(sink.counts), "none")
        finally:
            self.runs.write(f"E {msg.id} {time.monotonic_ns()} {outcome}\n")
