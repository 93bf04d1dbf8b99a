"""Worker processes on a Redis Cluster: a SIGKILLed worker's entries on streams in three slots
are taken over by the others; nothing is lost, nothing stays pending."""

from __future__ import annotations

import json
import signal

import pytest
from redis.asyncio import Redis

from tests.helpers import WorkerProcess, eventually, pending_count
from worker.publish import event_fields
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def routes(streams: list[str]) -> str:
    return json.dumps(
        [{"stream": s, "handler": "tests.integration.plugins:Recorder"} for s in streams]
    )


async def test_a_killed_workers_entries_are_taken_over_on_every_slot(
    cluster: Redis, redis_cluster: RedisClusterServers, slotted: dict[str, str]
) -> None:
    """After SIGKILL mid-batch, two other processes finish every entry of the three streams."""
    streams, group = [slotted["a"], slotted["b"], slotted["c"]], slotted["group"]
    ids: dict[str, set[str]] = {s: set() for s in streams}
    for n in range(300):
        stream = streams[n % 3]
        entry = await cluster.xadd(stream, event_fields("t", {"n": n}, key=f"k{n % 17}"))
        ids[stream].add(entry.decode())

    def start(name: str, **env: object) -> WorkerProcess:
        return WorkerProcess(
            redis_cluster.url, group, streams[0], name, SYNCWORKER_ROUTES=routes(streams), **env
        )

    async def processed(stream: str) -> set[str]:
        return {i.decode() for i in await cluster.lrange(f"{stream}:processed", 0, -1)}

    async def pending() -> list[int]:
        return [await pending_count(cluster, s, group) for s in streams]

    victim = await start(
        "victim", TEST_SLEEP=0.01, SYNCWORKER_CONCURRENCY=4, SYNCWORKER_BATCH_SIZE=30
    ).start()

    async def some_done() -> bool:
        return sum([len(await processed(s)) for s in streams]) >= 40

    await eventually(some_done, timeout=30)
    await victim.kill()
    assert sum(await pending()) > 0, "killed too late to test anything"
    held = [n for n in await pending() if n]
    assert len(held) >= 2, "the victim should hold entries of several slots"

    survivors = [await start(f"survivor{n}", SYNCWORKER_CLAIM_IDLE=1.0).start() for n in (1, 2)]
    try:

        async def all_done() -> bool:
            done = [await processed(s) == ids[s] for s in streams]
            return all(done) and await pending() == [0, 0, 0]

        await eventually(all_done, timeout=60)
        # one survivor may finish everything before the other is up: SIGTERM only once both
        # handle it (`worker.started` comes after the signal handlers are in)
        await eventually(lambda: all("worker.started" in s.output() for s in survivors), 30)
    finally:
        for survivor in survivors:
            await survivor.wait_started()  # the other may finish everything before this is up
            survivor.signal(signal.SIGTERM)
        codes = [await s.wait() for s in survivors]
    assert codes == [0, 0]
    assert "message.reclaimed" in survivors[0].output() + survivors[1].output()
    for stream in streams:
        assert not await cluster.exists("{" + stream + "}:dlq")
