"""After a Redis outage, takeover gives live owners a heartbeat interval before it claims.

While Redis is away no heartbeat refreshes anything, so the moment it is back every entry
held through the outage looks abandoned. Found by the chaos suite (a server restart): a peer
claimed entries 0.3 s after Redis returned while their owner was running them.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tests.handlers.tcp_proxy import Proxy
from tests.helpers import make_settings
from worker import Message, handler
from worker.redis_server import RedisServer
from worker.runtime.worker import Worker

pytestmark = pytest.mark.redis


async def owner_of(redis: Redis, stream: str, group: str) -> str:
    """The consumer the entry is pending on, or "(acked)" once it was run and acknowledged."""
    rows = await redis.xpending_range(stream, group, "-", "+", 1)
    return str(rows[0]["consumer"].decode()) if rows else "(acked)"


class TestTakeoverAfterAnOutage:
    async def test_entries_held_through_an_outage_are_not_claimed_at_once(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The first scan after an outage leaves them; one a heartbeat interval later claims."""
        stream, group = names["stream"], names["group"]
        entry_id = (await redis.xadd(stream, {"n": "1"})).decode()
        await redis.xgroup_create(stream, group, id="0")
        await redis.xreadgroup(group, "owner", {stream: ">"})
        # Given an entry of another consumer that no heartbeat refreshed for longer than
        # claim_idle (as after an outage)
        await redis.xclaim(stream, group, "owner", 0, [entry_id], idle=60_000, justid=True)

        @handler(stream=stream)
        async def noop(msg: Message) -> None:
            pass

        proxy = Proxy(redis_server.port)
        await proxy.start()
        settings = make_settings(
            f"redis://127.0.0.1:{proxy.port}/0", group, consumer="peer", claim_idle=3.0
        )
        client = Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=1)
        try:
            engine = Worker(settings, [noop], services=[])._assemble(client, client)
            takeover = engine.takeover
            engine.lanes.start()  # so that a claimed suspect runs, is acked and leaves the ledger
            settler = asyncio.create_task(engine.settler.run())
            # When this process's scan fails (Redis unreachable) and Redis then answers again
            await proxy.stop()
            await takeover._turn("claim", takeover._take_over)
            await proxy.start()
            await takeover._turn("claim", takeover._take_over)
            # Then the first scan after the outage leaves the entry to its owner
            assert await owner_of(redis, stream, group) == "owner"
            # And once Redis has answered for a heartbeat interval, it counts as abandoned:
            # claimed, run and acknowledged by this consumer
            await asyncio.sleep(settings.heartbeat_interval)
            await asyncio.wait_for(takeover._turn("claim", takeover._take_over), 10)
            assert await redis.xpending_range(stream, group, "-", "+", 1) == []  # run and acked
        finally:
            engine.settler.close()
            engine.lanes.close()
            await engine.lanes.wait(1.0)
            await asyncio.wait_for(settler, 5)
            await client.aclose()
            await proxy.stop()
