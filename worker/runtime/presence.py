"""Presence: a key per stream that says "this consumer's process is alive", with a TTL.

A consumer's idle time in XINFO CONSUMERS cannot tell a live worker from a dead one: on
Redis 7.0 it grows while the stream is quiet (`inactive` only arrived in 7.2). So every
running worker refreshes `presence_key(stream, group, consumer)` each `heartbeat_interval`,
with a time to live of `claim_idle` (three intervals): the key exists exactly while a process
with that consumer name is alive, and `syncworker consumers prune` keeps such consumers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis

from worker import keys
from worker.connection import tolerate
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings


def presence_key(stream: str, group: str, consumer: str, *, cluster: bool = False) -> str:
    """The presence key of one consumer of `group` on `stream`.

    On a cluster it carries the stream's hash tag (`worker.keys.derived`), so that it shares
    the stream's slot, which the prune script relies on; elsewhere it keeps its plain name.
    """
    return keys.derived(stream, f":presence:{group}:{consumer}", cluster)


class Presence:
    """Refreshes this consumer's presence key on every routed stream until cancelled."""

    def __init__(
        self, redis: Redis, settings: WorkerSettings, streams: Sequence[str], stats: Stats
    ) -> None:
        self.redis = redis
        self.streams = list(streams)
        self.stats = stats
        self.interval = settings.heartbeat_interval
        self.ttl_ms = int(settings.claim_idle * 1000)
        self.keys = [
            presence_key(s, settings.group, settings.consumer, cluster=settings.cluster)
            for s in self.streams
        ]

    @classmethod
    def start(
        cls, redis: Redis, settings: WorkerSettings, streams: Sequence[str], stats: Stats
    ) -> asyncio.Task[None]:
        """Run it on a task of its own, named for the task list."""
        return asyncio.create_task(
            cls(redis, settings, streams, stats).run(), name="syncworker-presence"
        )

    async def run(self) -> None:
        """Mark at once, then every `heartbeat_interval`; an outage only costs a turn."""
        while True:
            await tolerate("presence", self.stats, self.mark)
            await asyncio.sleep(self.interval)

    async def mark(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.set(key, "1", px=self.ttl_ms)
        await pipe.execute()
