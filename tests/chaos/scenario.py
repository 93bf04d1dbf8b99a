"""One chaos scenario end to end: server, fleet, publisher and faults, then the accounting.

The run: start a server of our own (AOF with `appendfsync always` when the scenario restarts
it), a fleet of worker processes behind proxies, publish the planned entries while the faults
fire, restart whatever is down, wait (bounded) until the group has delivered everything and
holds nothing pending, stop the fleet, and count. The counts are returned as a `Tally`; the
test prints its table and asserts the rows that must be zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tests.chaos.events import plan
from tests.chaos.faults import Chaos
from tests.chaos.fleet import Slot, proxies, worker_env
from tests.chaos.publisher import Publisher
from tests.chaos.tally import Tally, count
from worker.redis_server import RedisServer

LONG = os.environ.get("SYNCWORKER_CHAOS_LONG", "") not in ("", "0")
"""`SYNCWORKER_CHAOS_LONG=1`: ten times the events, six times the faults, per scenario."""

WORKER_SETTINGS: dict[str, Any] = {
    "claim_idle": 2.0,  # short, so that takeover after a kill fits the budget
    "claim_interval": 0.2,
    "block": 0.1,
    "retry_base": 0.05,
    "retry_max": 0.5,
    "max_attempts": 20,  # faults cost attempts; a good event must never run out of them
    "shutdown_timeout": 2.0,
    "redis_timeout": 1.0,  # below claim_idle: a handler stuck on a stalled link gives up first
    "concurrency": 16,
}


@dataclass(frozen=True, slots=True)
class Scenario:
    """What a scenario does: which faults, how many, and whether the server restarts."""

    name: str
    kinds: tuple[str, ...]
    faults: int
    workers: int = 4
    events: int = 3000
    bad: int = 60
    huge: int = 0
    """How many of the bad entries carry thousands of fields."""
    publish_seconds: float = 10.0
    drain_seconds: float = 30.0

    @property
    def restarts_server(self) -> bool:
        return "redis_restart" in self.kinds

    def scaled(self) -> Scenario:
        """The long mode's version of this scenario."""
        if not LONG:
            return self
        return dataclasses.replace(
            self,
            faults=self.faults * 6,
            events=self.events * 10,
            bad=self.bad * 10,
            huge=self.huge * 10,
            publish_seconds=self.publish_seconds * 8,
            drain_seconds=self.drain_seconds * 4,
        )


@contextlib.asynccontextmanager
async def fleet_of(
    scenario: Scenario, server: RedisServer, env: dict[str, str], logs: Path
) -> AsyncIterator[list[Slot]]:
    """The scenario's workers, each behind its own proxy; any survivor is killed on exit."""
    async with proxies(scenario.workers, server.port) as started:
        slots = [Slot(i, proxy, env, logs) for i, proxy in enumerate(started)]
        try:
            for slot in slots:
                await slot.start(f"w{slot.index}")
            yield slots
        finally:
            for slot in slots:
                await slot.reap()


async def run(scenario: Scenario, seed: int, tmp: Path) -> Tally:
    """Run `scenario` with `seed`; `tmp` receives the run logs and the worker logs."""
    rng = random.Random(f"{seed}:{scenario.name}")
    entries = plan(rng, seed, scenario.events, scenario.bad, scenario.huge)
    stream, group = f"chaos:{scenario.name}", "chaos"
    run_dir, logs = tmp / "runs", tmp / "logs"
    run_dir.mkdir()
    logs.mkdir()
    server = RedisServer(appendonly=scenario.restarts_server, appendfsync="always")
    started = time.monotonic()
    with server:
        redis = Redis.from_url(server.url, socket_timeout=5)
        try:
            await redis.xgroup_create(stream, group, id="0", mkstream=True)
            env = worker_env(stream, group, run_dir, **WORKER_SETTINGS)
            async with fleet_of(scenario, server, env, logs) as slots:
                chaos = Chaos(rng, slots, server, redis, stream, group)
                publisher = Publisher(redis, stream, entries, scenario.publish_seconds)
                schedule = chaos.schedule(
                    scenario.kinds, scenario.faults, scenario.publish_seconds + 2.0
                )
                await asyncio.gather(publisher.run(), chaos.run(schedule))
                await chaos.settle()
                drained = await drain(redis, stream, group, publisher, scenario.drain_seconds)
                await asyncio.gather(*(slot.stop(signal.SIGTERM, "final") for slot in slots))
            lives = [life for slot in slots for life in slot.lives]
            tally = await count(redis, stream, group, entries, publisher, lives, run_dir)
        finally:
            await redis.aclose()
        tally.server = await server_name(server)
    tally.scenario, tally.seed, tally.drained = scenario.name, seed, drained
    tally.faults, tally.same_name_restarts = dict(chaos.done), chaos.same_name_restarts
    tally.wall_s, tally.logs = time.monotonic() - started, tmp
    return tally


async def drain(redis: Redis, stream: str, group: str, pub: Publisher, timeout: float) -> float:
    """Wait until everything published was delivered and nothing is pending; seconds waited,
    or -1 when the bound ran out (the tally then shows what was left)."""
    last = max(pub.ids.values(), key=lambda i: tuple(map(int, i.split("-"))))
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            info = next(g for g in await redis.xinfo_groups(stream) if g["name"] == group.encode())
            delivered = info["last-delivered-id"].decode()
            if _id(delivered) >= _id(last) and int(info["pending"]) == 0:
                return time.monotonic() - started
        await asyncio.sleep(0.2)
    return -1.0


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def server_name(server: RedisServer) -> str:
    """`valkey 8.1.8` or `redis 7.0.15`, from the server's INFO."""
    async with Redis.from_url(server.url) as redis:
        info = await redis.info("server")
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info['redis_version']}"
