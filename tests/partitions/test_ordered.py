"""Ordered partitioned routes: per-key order across a fleet, leases, rebalancing, strict mode.

Each handler call goes through a check script in Redis (`plugins.CHECK`) that counts an
event applied after a later one of its key as a violation, whichever process applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, running
from tests.partitions.conftest import counts, last_versions, owners, pending_total
from tests.partitions.plugins import BatchVersionCheck, VersionCheck
from worker import ConfigError, Publisher, Worker
from worker.redis_server import RedisServer
from worker.registry import validate

PARTS = 6
TTL = 1.0


def settings(server: RedisServer, names: dict[str, str], consumer: str, **extra: Any) -> Any:
    return make_settings(
        server.url, names["group"], consumer=consumer, lease_ttl=TTL, handler_timeout=5, **extra
    )


def check_handler(names: dict[str, str], ordered: Any = True, sleep: float = 0.0) -> VersionCheck:
    h = VersionCheck(prefix=f"check:{names['suffix']}", sleep=sleep)
    bound = h.bind([names["stream"]], partitions=PARTS, ordered=ordered)
    bound.name = "check"
    assert isinstance(bound, VersionCheck)
    return bound


async def publish_versions(redis: Redis, stream: str, keys: int, versions: int) -> None:
    """Versions 1..n of each key, interleaved across keys (so each partition mixes keys)."""
    pub = Publisher(redis, partitions={stream: PARTS})
    for v in range(1, versions + 1):
        for k in range(keys):
            await pub.publish(stream, "set", {"v": v}, key=f"k{k}", version=v)


@contextlib.asynccontextmanager
async def fleet(workers: list[Worker]) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield tasks
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


def owned_by(worker: Worker) -> set[str]:
    return set() if worker.ordered is None else set(worker.ordered.owned)


async def test_two_workers_apply_each_key_in_order_and_share_the_partitions(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    prefix = f"check:{names['suffix']}"
    workers = [
        Worker(settings(redis_server, names, f"c{i}"), [check_handler(names, sleep=0.001)])
        for i in range(2)
    ]
    async with fleet(workers):
        await publish_versions(redis, names["stream"], keys=20, versions=10)
        await eventually(
            lambda: len(owned_by(workers[0])) + len(owned_by(workers[1])) == PARTS, timeout=10
        )
        # healthy and settled: no worker holds more than its fair share
        await eventually(lambda: all(len(owned_by(w)) <= math.ceil(PARTS / 2) for w in workers))

        async def all_applied() -> bool:
            return set((await last_versions(redis, prefix)).values()) == {10}

        await eventually(all_applied, timeout=20)
    assert (await counts(redis, prefix)).get("violations", 0) == 0
    assert await pending_total(redis, names["stream"], PARTS, names["group"]) == 0


async def test_graceful_stop_releases_leases_and_a_joining_worker_gets_its_share(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    first = Worker(settings(redis_server, names, "first"), [check_handler(names)])
    async with fleet([first]):
        await eventually(lambda: len(owned_by(first)) == PARTS)
        second = Worker(settings(redis_server, names, "second"), [check_handler(names)])
        async with fleet([second]):
            # the newcomer joins: the first gives up its surplus, the second takes it
            await eventually(lambda: len(owned_by(second)) == PARTS // 2, timeout=10)
            await eventually(lambda: len(owned_by(first)) == PARTS // 2, timeout=10)
            held = Counter(await owners(redis, names["stream"], PARTS, names["group"]))
            assert held == {"first": PARTS // 2, "second": PARTS // 2}
        # stopped gracefully: its leases are gone at once, not left to expire
        assert "second" not in await owners(redis, names["stream"], PARTS, names["group"])
        await eventually(lambda: len(owned_by(first)) == PARTS, timeout=10)


async def test_a_lost_lease_stops_the_partition_before_anyone_else_may_take_it(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    handler = check_handler(names, sleep=30)
    prefix = f"check:{names['suffix']}"
    async with running(settings(redis_server, names, "owner"), [handler]) as worker:
        await eventually(lambda: len(owned_by(worker)) == PARTS)
        pub = Publisher(redis, partitions={names["stream"]: PARTS})
        await pub.publish(names["stream"], "set", {}, key="k", version=1)
        await eventually(lambda: worker.busy())
        partition = next(iter(worker.ledger.held))
        # Someone else holds the lease now (as after an expiry the owner did not notice):
        # the owner's renewal fails, and it stops the call it was running.
        await redis.set(f"{partition}:lease:{names['group']}", "intruder", px=60_000)
        await eventually(lambda: handler.cancelled != [], timeout=5)
        assert partition not in owned_by(worker)
        assert worker.stats.leases_lost[names["stream"]] == 1
        assert await redis.get(f"{partition}:lease:{names['group']}") == b"intruder"
        # not applied, not acknowledged: still pending, for the partition's owner to run
        assert (await counts(redis, prefix)).get("applied", 0) == 0
        assert int((await redis.xpending(partition, names["group"]))["pending"]) == 1


async def strict_run(redis: Redis, server: RedisServer, names: dict[str, str], mode: Any) -> Any:
    prefix = f"check:{names['suffix']}"
    pub = Publisher(redis, partitions={names["stream"]: PARTS})
    await pub.publish(names["stream"], "set", {"fail": 2}, key="k", version=1)
    for v in (2, 3):
        await pub.publish(names["stream"], "set", {}, key="k", version=v)
    async with running(settings(server, names, "solo"), [check_handler(names, mode)]):

        async def done() -> bool:
            return (await last_versions(redis, prefix)).get("k") == 3 and (
                await pending_total(redis, names["stream"], PARTS, names["group"])
            ) == 0

        await eventually(done, timeout=15)
    return await counts(redis, prefix)


async def test_strict_mode_holds_a_key_back_behind_its_retry(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    found = await strict_run(redis, redis_server, names, "strict")
    assert found.get("violations", 0) == 0
    assert found["applied"] == 3


async def test_without_strict_mode_a_retried_event_lands_after_later_ones(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    """The documented difference: ordered (not strict) lets the key go on past a retry."""
    found = await strict_run(redis, redis_server, names, True)
    assert found.get("violations", 0) == 1  # version 1 came back after 3
    assert found["applied"] == 2


class CutRecorder(VersionCheck):
    """Records, when its call is cut off, how long Redis still keeps the partition's lease."""

    def __init__(self, direct: Redis, group: str, prefix: str) -> None:
        super().__init__(prefix=prefix, sleep=30)
        self.direct = direct
        self.group = group
        self.lease_ms_left_at_cut: list[int] = []

    async def handle(self, msg: Any) -> None:
        try:
            await super().handle(msg)
        except asyncio.CancelledError:
            key = f"{msg.stream}:lease:{self.group}"
            self.lease_ms_left_at_cut.append(await self.direct.pttl(key))
            raise


async def test_an_owner_cut_off_from_redis_stops_before_its_lease_runs_out(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    """Its renewals hang (a command may wait redis_timeout, 10 s, far beyond the 1 s lease):
    the owner still stops the running call on its own clock, while Redis still holds the
    lease, so no successor can have started the partition yet."""
    from tests.handlers.tcp_proxy import Proxy

    proxy = Proxy(redis_server.port)
    await proxy.start()
    recorder = CutRecorder(redis, names["group"], f"check:{names['suffix']}")
    bound = recorder.bind([names["stream"]], partitions=PARTS, ordered=True)
    assert isinstance(bound, CutRecorder)
    config = settings(redis_server, names, "cut-off", redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    try:
        async with running(config, [bound]) as worker:
            await eventually(lambda: len(owned_by(worker)) == PARTS)
            pub = Publisher(redis, partitions={names["stream"]: PARTS})
            await pub.publish(names["stream"], "set", {}, key="k", version=1)
            await eventually(lambda: worker.busy())
            stall = asyncio.create_task(proxy.stall(3 * TTL))
            await eventually(lambda: bound.lease_ms_left_at_cut != [], timeout=3 * TTL)
            assert bound.lease_ms_left_at_cut[0] > 0
            await eventually(lambda: owned_by(worker) == set(), timeout=TTL)
            await stall
    finally:
        await proxy.stop()


async def test_batch_handlers_on_ordered_partitions_keep_each_keys_order(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    prefix = f"check:{names['suffix']}"
    handlers = []
    for _ in range(2):
        h = BatchVersionCheck(prefix).bind([names["stream"]], partitions=PARTS, ordered=True)
        assert isinstance(h, BatchVersionCheck)
        handlers.append(h)
    workers = [Worker(settings(redis_server, names, f"c{i}"), [handlers[i]]) for i in range(2)]
    async with fleet(workers):
        await eventually(
            lambda: len(owned_by(workers[0])) + len(owned_by(workers[1])) == PARTS, timeout=10
        )
        await publish_versions(redis, names["stream"], keys=30, versions=10)

        async def all_applied() -> bool:
            return set((await last_versions(redis, prefix)).values()) == {10}

        await eventually(all_applied, timeout=20)
    assert (await counts(redis, prefix)).get("violations", 0) == 0
    assert await pending_total(redis, names["stream"], PARTS, names["group"]) == 0
    assert max(handlers[0].sizes + handlers[1].sizes) > 1  # they did run in batches


def test_strict_order_refuses_batch_handlers(names: dict[str, str]) -> None:
    handler = BatchVersionCheck("x").bind([names["stream"]], partitions=PARTS, ordered="strict")
    with pytest.raises(ConfigError, match="batch = false"):
        validate([handler])
