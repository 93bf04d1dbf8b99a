"""The idempotency helper: recorded Redis writes run once per message, with the ack."""

from __future__ import annotations

import random
import uuid

import pytest
from redis.asyncio import Redis

from handlers.idempotent import Effects
from tests.handlers.events import Event, delivered, publish
from tests.handlers.plugins import Tally
from tests.helpers import make_settings, pending_count
from worker import ConfigError, HandlerContext, Message, Reject, handler
from worker.redis_server import RedisServer
from worker.registry import validate

pytestmark = pytest.mark.redis


async def tally(redis: Redis, redis_server: RedisServer, prefix: str, *, ack: bool = True) -> Tally:
    t = Tally(prefix, ack=ack)
    await t.on_startup(HandlerContext(redis, "g", "c", make_settings(redis_server.url, "g")))
    return t


class TestEffects:
    async def test_each_message_applies_once_however_often_delivered(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        """Repeated deliveries in any order count each message exactly once, and ack it."""
        run = uuid.uuid4().hex[:8]
        stream = f"{run}:s"
        await publish(redis, stream, [Event("t", f"k{n % 3}", None, {}) for n in range(30)])
        messages = await delivered(redis, stream, "g", 30)
        deliveries = messages + random.Random(1).choices(messages, k=40)
        random.Random(2).shuffle(deliveries)
        t = await tally(redis, redis_server, f"{run}:")
        for msg in deliveries:
            await t.handle(msg)
        assert await redis.get(f"{run}:total") == b"30"
        assert await redis.hgetall(f"{run}:by-key") == {b"k0": b"10", b"k1": b"10", b"k2": b"10"}
        assert t.counts == {"applied": 30, "duplicate": 40}
        assert await pending_count(redis, stream, "g") == 0

    async def test_without_ack_the_runtime_acknowledges(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        """With ack = False the effects run once but the entry stays pending for the runtime."""
        run = uuid.uuid4().hex[:8]
        await publish(redis, f"{run}:s", [Event("t", "k", None, {})])
        (msg,) = await delivered(redis, f"{run}:s", "g", 1)
        t = await tally(redis, redis_server, f"{run}:", ack=False)
        await t.handle(msg)
        await t.handle(msg)
        assert await redis.get(f"{run}:total") == b"1"
        assert await pending_count(redis, f"{run}:s", "g") == 1
        assert not t.acks_atomically

    async def test_context_manager_commits_only_on_success(self, redis: Redis) -> None:
        """`async with Effects(...)` runs the writes on a clean exit and none on an exception."""
        run = uuid.uuid4().hex[:8]
        msg = Message(f"{run}:s", "1-0", {}, 1, "g")
        with pytest.raises(RuntimeError):
            async with Effects(redis, msg) as tx:
                tx.set(f"{run}:a", "1")
                raise RuntimeError("handler failed")
        assert await redis.exists(f"{run}:a") == 0
        async with Effects(redis, msg) as tx:
            tx.set(f"{run}:a", "1").sadd(f"{run}:set", "x").zadd(f"{run}:z", {"m": 2})
            tx.rpush(f"{run}:l", "v").xadd(f"{run}:out", {"f": "v"}, maxlen=10)
            tx.expire(f"{run}:a", 60)
        assert tx.applied
        assert await redis.get(f"{run}:a") == b"1"
        assert await redis.zscore(f"{run}:z", "m") == 2
        assert await redis.xlen(f"{run}:out") == 1
        again = Effects(redis, msg).set(f"{run}:a", "2")
        assert await again.commit() is False
        assert await redis.get(f"{run}:a") == b"1"

    async def test_writes_wider_than_a_script_call_run_whole(self, redis: Redis) -> None:
        """Hashes, sets and lists of 9,000 items (more values than Lua's unpack takes) are
        written whole; a command that cannot be split is rejected when recorded."""
        run = uuid.uuid4().hex[:8]
        msg = Message(f"{run}:s", "1-0", {}, 1, "g")
        items = [f"i{n}" for n in range(9_000)]
        async with Effects(redis, msg) as tx:
            tx.hset(f"{run}:h", dict.fromkeys(items, "v")).sadd(f"{run}:set", *items)
            tx.rpush(f"{run}:l", *items).zadd(f"{run}:z", dict.fromkeys(items, 1.0))
            with pytest.raises(Reject, match="too many arguments"):
                tx.call("PFADD", f"{run}:hll", *items)
        assert tx.applied
        assert await redis.hlen(f"{run}:h") == 9_000
        assert await redis.scard(f"{run}:set") == 9_000
        assert await redis.lrange(f"{run}:l", 0, -1) == [i.encode() for i in items]
        assert await redis.zcard(f"{run}:z") == 9_000

    def test_acking_helpers_must_be_alone_on_their_stream(self) -> None:
        """An IdempotentHandler that acks is refused beside another handler on its stream."""

        @handler(stream="s")
        async def other(msg: Message) -> None:
            pass

        with pytest.raises(ConfigError, match="acknowledges atomically"):
            validate([Tally("p:").bind(["s"]), other])
        validate([Tally("p:", ack=False).bind(["s"]), other])
