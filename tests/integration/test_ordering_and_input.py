"""Per-key order under concurrency, and arbitrary input that must never crash the worker."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.publish import event_fields
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestPerKeyOrder:
    async def test_same_key_never_runs_concurrently_and_keeps_stream_order(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """With 8 lanes and random handler times, each key's messages run one by one, in order."""
        stream, group = names["stream"], names["group"]
        active: set[str] = set()
        overlaps: list[str] = []
        seen: dict[str, list[int]] = {}
        max_parallel = 0

        @handler(stream=stream)
        async def ordered(msg: Message) -> None:
            nonlocal max_parallel
            key = msg.key or ""
            if key in active:
                overlaps.append(key)
            active.add(key)
            max_parallel = max(max_parallel, len(active))
            await asyncio.sleep(random.random() * 0.002)
            seen.setdefault(key, []).append(msg.data["seq"])
            active.discard(key)

        pipe = redis.pipeline(transaction=False)
        for seq in range(40):
            for k in range(15):
                pipe.xadd(stream, event_fields("entity.changed", {"seq": seq}, key=f"k{k}"))
        await pipe.execute()

        settings_ = make_settings(redis_server.url, group, concurrency=8, batch_size=50)
        async with running(settings_, [ordered]):
            await eventually(lambda: sum(len(v) for v in seen.values()) == 600, timeout=20)
        assert overlaps == []
        assert all(seqs == list(range(40)) for seqs in seen.values())
        assert max_parallel > 1, "messages of different keys should have run concurrently"
        assert await pending_count(redis, stream, group) == 0


field_bytes = st.binary(min_size=0, max_size=24)
field_maps = st.dictionaries(
    st.one_of(field_bytes.filter(bool), st.sampled_from([b"type", b"key", b"data", b"version"])),
    field_bytes,
    min_size=1,
    max_size=6,
)


class TestArbitraryInput:
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(entries=st.lists(field_maps, min_size=1, max_size=20))
    def test_arbitrary_field_maps_never_crash_the_worker(
        self, redis_server: RedisServer, entries: list[dict[bytes, bytes]]
    ) -> None:
        """Any bytes in any field end processed or dead-lettered; the worker keeps running."""
        asyncio.run(self._run(redis_server.url, entries))

    async def _run(self, url: str, entries: list[dict[bytes, bytes]]) -> None:
        suffix = f"{random.getrandbits(48):x}"
        stream, group = f"fuzz:{suffix}", f"g-{suffix}"
        redis = Redis.from_url(url)
        outcomes: list[str] = []

        @handler(stream=stream)
        async def inspect_everything(msg: Message) -> None:
            # Touch every decoded view, as a curious handler would.
            _ = (msg.fields, msg.type, msg.key, msg.event_id, msg.timestamp_ms)
            _ = (msg.version, msg.data)  # these may raise MalformedMessage -> dead letter
            outcomes.append(msg.id)

        try:
            for fields in entries:
                await redis.xadd(stream, fields)  # type: ignore[arg-type]
            async with running(make_settings(url, group, max_attempts=1), [inspect_everything]):

                async def settled() -> bool:
                    return await pending_count(redis, stream, group) == 0 and (
                        len(outcomes) + await redis.xlen(stream + ":dlq") == len(entries)
                    )

                await eventually(settled, timeout=10)
        finally:
            await redis.delete(stream, stream + ":dlq")
            await redis.aclose()
