"""An ordered route on a fleet of worker processes, through SIGKILLs and newcomers.

Three `syncworker run` processes consume a stream of 6 partitions while events are being
published; one is killed with SIGKILL and a new one started, mid-stream. Every event goes
through the Redis-side check of `plugins.CHECK`: at the end, every key's last version must
be applied, each version exactly once in increasing order (no violation), and nothing left
pending. `SYNCWORKER_CHAOS_LONG=1` runs ten times the events with a kill every few seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from redis.asyncio import Redis

from tests.helpers import WorkerProcess, eventually
from tests.partitions.conftest import counts, last_versions, pending_total
from worker import Publisher
from worker.redis_server import RedisServer

PARTS = 6
LONG = os.environ.get("SYNCWORKER_CHAOS_LONG") == "1"
KEYS = 30
VERSIONS = 200 if LONG else 20
KILLS = 8 if LONG else 1


def start(server: RedisServer, names: dict[str, str], consumer: str) -> WorkerProcess:
    route = {
        "stream": names["stream"],
        "handler": "tests.partitions.plugins:VersionCheck",
        "partitions": PARTS,
        "ordered": True,
    }
    return WorkerProcess(
        server.url,
        names["group"],
        names["stream"],
        consumer,
        SYNCWORKER_ROUTES=json.dumps([route]),
        SYNCWORKER_LEASE_TTL="2",
        SYNCWORKER_HANDLER_TIMEOUT="5",
        TEST_CHECK=f"check:{names['suffix']}",
        TEST_SLEEP="0.002",
    )


async def test_key_order_holds_across_a_fleet_through_kills_and_joins(
    redis: Redis, redis_server: RedisServer, names: dict[str, str]
) -> None:
    prefix = f"check:{names['suffix']}"
    fleet = [await start(redis_server, names, f"w{i}").start() for i in range(3)]
    await eventually(lambda: all(map(started, fleet)), timeout=60)
    pub = Publisher(redis, partitions={names["stream"]: PARTS})
    kill_every = VERSIONS // (KILLS + 1)
    for v in range(1, VERSIONS + 1):
        for k in range(KEYS):
            await pub.publish(names["stream"], "set", {"v": v}, key=f"k{k}", version=v)
        if v % kill_every == 0 and v // kill_every <= KILLS:
            victim = fleet.pop(0)
            victim.signal(signal.SIGKILL)
            await victim.wait()
            fleet.append(await start(redis_server, names, f"w{v}").start())
        await asyncio.sleep(0.02)

    async def done() -> bool:
        versions = await last_versions(redis, prefix)
        return len(versions) == KEYS and set(versions.values()) == {VERSIONS}

    await eventually(done, timeout=120 if LONG else 30)
    await eventually(
        lambda: _zero(pending_total(redis, names["stream"], PARTS, names["group"])), timeout=10
    )
    found = await counts(redis, prefix)
    await eventually(lambda: all(map(started, fleet)), timeout=60)
    for worker in fleet:
        worker.signal(signal.SIGTERM)
    assert [await w.wait() for w in fleet] == [0] * len(fleet)
    log = [e.decode() for e in await redis.lrange(f"{prefix}:log", 0, 20)]
    assert found.get("violations", 0) == 0, log
    assert found["applied"] == KEYS * VERSIONS


def started(worker: WorkerProcess) -> bool:
    return '"worker.started"' in worker.output()


async def _zero(total: object) -> bool:
    assert asyncio.iscoroutine(total)
    return await total == 0
