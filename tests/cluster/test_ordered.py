"""Ordered partitions on a Redis Cluster: the partitions spread over the primaries, and two
workers still apply each key's events in order and leave nothing pending."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from tests.helpers import eventually, make_settings
from tests.partitions.conftest import counts, last_versions, pending_total
from tests.partitions.plugins import VersionCheck
from worker import Publisher, Worker
from worker.keys import key_slot
from worker.partitions import partition_names
from worker.redis_cluster import RedisClusterServers

PARTS = 6


async def test_two_workers_keep_each_keys_order_over_partitions_on_every_primary(
    cluster: Redis, redis_cluster: RedisClusterServers, slotted: dict[str, Any]
) -> None:
    stream, group, prefix = slotted["a"], slotted["group"], f"check:{slotted['suffix']}"
    # Given partitions that live on more than one primary
    assert len({key_slot(p) // 5462 for p in partition_names(stream, PARTS)}) > 1
    handlers = []
    for _ in range(2):
        h = VersionCheck(prefix=f"{{{prefix}}}").bind([stream], partitions=PARTS, ordered=True)
        h.name = "check"
        handlers.append(h)
    workers = [
        Worker(
            make_settings(redis_cluster.url, group, consumer=f"c{i}", lease_ttl=2.0),
            [handlers[i]],
        )
        for i in range(2)
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        publisher = Publisher(cluster, partitions={stream: PARTS})
        for v in range(1, 6):
            for k in range(12):
                await publisher.publish(stream, "set", {"v": v}, key=f"k{k}", version=v)

        async def all_applied() -> bool:
            return set((await last_versions(cluster, f"{{{prefix}}}")).values()) == {5}

        await eventually(all_applied, timeout=30)
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert (await counts(cluster, f"{{{prefix}}}")).get("violations", 0) == 0
    assert await pending_total(cluster, stream, PARTS, group) == 0
