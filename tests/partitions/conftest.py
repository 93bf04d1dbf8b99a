"""Fixtures of the partition tests: fresh names, a publisher, and the check's counters."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from worker.partitions import partition_names


async def counts(redis: Redis, prefix: str) -> dict[str, int]:
    raw = await redis.hgetall(f"{prefix}:counts")
    return {k.decode(): int(v) for k, v in raw.items()}


async def last_versions(redis: Redis, prefix: str) -> dict[str, int]:
    raw = await redis.hgetall(f"{prefix}:last")
    return {k.decode(): int(v) for k, v in raw.items()}


async def pending_total(redis: Redis, stream: str, partitions: int, group: str) -> int:
    total = 0
    for name in partition_names(stream, partitions):
        try:
            total += int((await redis.xpending(name, group))["pending"])
        except Exception:  # no group yet
            continue
    return total


async def owners(redis: Redis, stream: str, partitions: int, group: str) -> list[Any]:
    names = partition_names(stream, partitions)
    values = [await redis.get(f"{n}:lease:{group}") for n in names]
    return [None if v is None else v.decode() for v in values]
