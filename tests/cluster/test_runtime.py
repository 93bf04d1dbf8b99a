"""The runtime on a Redis Cluster: streams in different slots, retries, dead letters."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.keys import key_slot
from worker.publish import Publisher
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


async def letters(redis: Redis, dlq: str) -> list[dict[str, str]]:
    entries: list[Any] = await redis.xrange(dlq)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


class TestStreamsInDifferentSlots:
    async def test_every_entry_of_every_stream_is_handled_and_acked(
        self, cluster: Redis, redis_cluster: RedisClusterServers, slotted: dict[str, str]
    ) -> None:
        """Entries published to three streams on three primaries are all handled once, and
        nothing stays pending on any of them."""
        streams = [slotted["a"], slotted["b"], slotted["c"]]
        assert len({key_slot(s) for s in streams}) == 3
        seen: list[tuple[str, int]] = []

        @handler(stream=streams[0])
        async def first(msg: Message) -> None:
            seen.append((msg.stream, msg.data["n"]))  # type: ignore[index]

        @handler(stream=streams[1])
        async def second(msg: Message) -> None:
            seen.append((msg.stream, msg.data["n"]))  # type: ignore[index]

        @handler(stream=streams[2])
        async def third(msg: Message) -> None:
            seen.append((msg.stream, msg.data["n"]))  # type: ignore[index]

        settings = make_settings(redis_cluster.url, slotted["group"])
        async with running(settings, [first, second, third]):
            publisher = Publisher(cluster)
            for n in range(90):
                await publisher.publish(streams[n % 3], "t", {"n": n}, key=f"k{n}")

            async def done() -> bool:
                pending = [await pending_count(cluster, s, slotted["group"]) for s in streams]
                return len(seen) >= 90 and pending == [0, 0, 0]

            await eventually(done)
        assert sorted(n for _, n in seen) == list(range(90))
        assert {(s, n) for s, n in seen} == {(streams[n % 3], n) for n in range(90)}


class TestRetryAndDeadLetter:
    async def test_failures_retry_then_dead_letter_in_the_streams_slot(
        self, cluster: Redis, redis_cluster: RedisClusterServers, slotted: dict[str, str]
    ) -> None:
        """A failing entry is retried up to max_attempts, then dead-lettered to `{stream}:dlq`
        (the stream's slot) with a rejected one beside it; the good entry is acked."""
        streams = [slotted["a"], slotted["b"]]
        attempts: dict[str, int] = {}

        async def behave(msg: Message) -> None:
            data: Any = msg.data
            attempts[data["what"] + msg.stream] = msg.attempt
            if data["what"] == "fail":
                raise RuntimeError("boom")
            if data["what"] == "reject":
                raise Reject("no")

        routes = [handler(stream=s)(behave) for s in streams]
        settings = make_settings(redis_cluster.url, slotted["group"], max_attempts=3)
        async with running(settings, routes):
            publisher = Publisher(cluster)
            for stream in streams:
                for what in ("ok", "fail", "reject"):
                    await publisher.publish(stream, "t", {"what": what})

            async def settled() -> bool:
                counts = [len(await cluster.xrange("{" + s + "}:dlq")) for s in streams]
                pending = [await pending_count(cluster, s, slotted["group"]) for s in streams]
                return counts == [2, 2] and pending == [0, 0]

            await eventually(settled)
        for stream in streams:
            dead = await letters(cluster, "{" + stream + "}:dlq")
            assert sorted(d["dlq_error_type"] for d in dead) == ["Reject", "RuntimeError"]
            assert {d["dlq_stream"] for d in dead} == {stream}
            assert attempts["fail" + stream] == 3
            assert attempts["ok" + stream] == 1
            assert not await cluster.exists(stream + ":dlq")


class TestScriptBatch:
    async def test_script_calls_in_a_batch_reach_their_slots_after_a_script_flush(
        self, cluster: Redis, slotted: dict[str, str]
    ) -> None:
        """redis-py refuses EVALSHA in a cluster pipeline; the batch sends each call to its
        key's primary, loads the script again where the server lost it, and reports a refused
        command in its place."""
        from redis.exceptions import ResponseError

        from worker.topology import batch

        script = cluster.register_script("return redis.call('INCR', KEYS[1])")
        await script(keys=[slotted["a"] + ":n"])  # loaded on its primary
        await cluster.script_flush()  # every primary forgets it
        pipe = batch(cluster, (script,))
        for name in ("a", "b", "c"):
            await script(keys=[slotted[name] + ":n"], client=pipe)
        pipe.xack(slotted["a"] + ":n", "g", "1-1")  # a string, not a stream: refused
        replies = await pipe.execute(raise_on_error=False)
        assert replies[:3] == [2, 1, 1]
        assert isinstance(replies[3], ResponseError) and "WRONGTYPE" in str(replies[3])
