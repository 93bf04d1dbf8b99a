"""A replayed dead letter is recognised by every built-in sink as the entry it copies.

The scenario: an entry's effect lands (and, for atomic sinks, its ack), then a stale consumer
that still thought it held the entry tries to dead-letter it. The ownership check refuses;
but a dead letter written that way before the check existed, once replayed, must still be a
duplicate for every sink: they deduplicate on `replay_of_stream`/`replay_of_id`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from handlers.projection import Projection
from handlers.relay import Relay
from handlers.sql import SqlSink
from tests.handlers.events import Event, delivered, publish
from tests.handlers.plugins import Tally
from tests.helpers import make_settings, pending_count
from worker import HandlerContext, Message, Reject
from worker.admin import deadletters
from worker.redis_server import RedisServer
from worker.runtime.dead_letter import DeadLetter, metadata, wide_dead_letter
from worker.runtime.ledger import Ledger
from worker.runtime.policy import RetryPolicy
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.wide import read_fields

pytestmark = pytest.mark.redis


@pytest.fixture
def run() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def landed(redis: Redis, run: str) -> Message:
    """One versionless event, delivered through group `g` of `<run>:s`."""
    await publish(redis, f"{run}:s", [Event("item.set", "k1", None, {"x": 1, "y": "a"})])
    (msg,) = await delivered(redis, f"{run}:s", "g", 1)
    return msg


async def replay_of(redis: Redis, msg: Message, group: str | None = None) -> Message:
    """Dead-letter `msg` as a stale consumer could before ownership was checked, replay that
    dead letter, and deliver the replayed entry through the same group."""
    fields = await read_fields(redis, msg.stream, msg.id)
    assert fields is not None
    letter = DeadLetter(msg, "RuntimeError", "stale consumer", "h")
    items = wide_dead_letter(fields, metadata(letter, msg.group, "stale"))
    dlq = msg.stream + ":dlq"
    dead_id = (await redis.execute_command("XADD", dlq, "*", *items)).decode()
    [new_id] = await deadletters.replay(redis, dlq, msg.stream, [dead_id], group)
    reply: Any = await redis.xreadgroup(msg.group, "tester", {msg.stream: ">"}, count=1)
    ((entry_id, raw),) = reply[0][1]
    assert entry_id.decode() == new_id
    return Message(msg.stream, new_id, raw, 1, msg.group)


class TestStaleConsumer:
    async def test_an_entry_whose_effect_landed_is_not_dead_lettered(
        self, redis: Redis, redis_server: RedisServer, landed: Message, run: str
    ) -> None:
        """An atomic sink applied and acked the entry; a stale consumer's dead letter of it is
        refused by the ownership check, so no replay can apply it twice."""
        tally = Tally(f"{run}:")
        await tally.on_startup(HandlerContext(redis, "g", "c", make_settings("redis://x", "g")))
        await tally.handle(landed)
        settings = make_settings(redis_server.url, "g", consumer="tester")
        settler = Settler(redis, settings, RetryPolicy.from_settings(settings), Ledger(9), Stats())
        settler.ledger.hold(landed)
        settler.dead_letter(landed, Reject("stale"), "tally")
        await settler.flush()
        assert await redis.xlen(f"{run}:s:dlq") == 0
        assert settler.stats.dead_letter_not_owned[f"{run}:s"] == 1
        assert await redis.get(f"{run}:total") == b"1"


class TestReplayIsADuplicate:
    async def test_idempotent_helper(
        self, redis: Redis, redis_server: RedisServer, landed: Message, run: str
    ) -> None:
        """The effect helper's marker is the original entry's: the replay changes nothing."""
        tally = Tally(f"{run}:")
        await tally.on_startup(HandlerContext(redis, "g", "c", make_settings("redis://x", "g")))
        await tally.handle(landed)
        await tally.handle(await replay_of(redis, landed))
        assert await redis.get(f"{run}:total") == b"1"
        assert tally.counts == {"applied": 1, "duplicate": 1}
        assert await pending_count(redis, landed.stream, "g") == 0

    async def test_relay(self, redis: Redis, landed: Message, run: str) -> None:
        """The relay forwards the original once; its replay adds no downstream entry."""
        relay = Relay(to=f"{run}:out")
        relay.use(redis)
        await relay.handle(landed)
        replayed = await replay_of(redis, landed)
        await relay.handle(replayed)
        assert await redis.xlen(f"{run}:out") == 1
        assert relay.counts == {"forwarded": 1, "duplicate": 1}
        assert await pending_count(redis, landed.stream, "g") == 0

    async def test_relay_does_not_forward_replay_fields(self, redis: Redis, run: str) -> None:
        """A replay that the relay forwards (its original never was) carries no replay_of_*
        fields downstream, where they would name an entry of another stream."""
        await publish(redis, f"{run}:s", [Event("item.set", "k1", None, {"x": 1})])
        (msg,) = await delivered(redis, f"{run}:s", "g", 1)
        relay = Relay(to=f"{run}:out")
        relay.use(redis)
        await relay.handle(await replay_of(redis, msg))
        [(_, forwarded)] = await redis.xrange(f"{run}:out")
        assert b"replay_of_stream" not in forwarded and b"replay_of_id" not in forwarded

    async def test_relay_does_not_forward_the_replay_group(self, redis: Redis, run: str) -> None:
        """A replay for one group (`dlq replay --group`) forwards without replay_for_group:
        downstream, it would keep every group but one of the target stream from the entry."""
        await publish(redis, f"{run}:s", [Event("item.set", "k1", None, {"x": 1})])
        (msg,) = await delivered(redis, f"{run}:s", "g", 1)
        relay = Relay(to=f"{run}:out")
        relay.use(redis)
        replayed = await replay_of(redis, msg, group="g")
        assert replayed.raw[b"replay_for_group"] == b"g"
        await relay.handle(replayed)
        [(_, forwarded)] = await redis.xrange(f"{run}:out")
        assert b"replay_for_group" not in forwarded

    async def test_projection_without_versions(
        self, redis: Redis, landed: Message, run: str
    ) -> None:
        """A versionless event's message-id marker is the original's: the replay is counted
        as a duplicate and leaves the entity alone."""
        projection = Projection(prefix=f"{run}:item:", events={"item.set": "merge"})
        projection.use(redis)
        await projection.handle(landed)
        await redis.hset(f"{run}:item:k1", "x", "changed")  # a second apply would undo this
        await projection.handle(await replay_of(redis, landed))
        assert await redis.hget(f"{run}:item:k1", "x") == b"changed"
        assert projection.counts == {"applied": 1, "duplicate": 1}

    @pytest.mark.postgres
    async def test_sql_inbox(
        self, redis: Redis, pg_dsn: str, landed: Message, run: str, sql_sinks: list[SqlSink]
    ) -> None:
        """The inbox row is keyed by the original entry: the replay finds it."""
        table = f"t_{run}"
        sink = SqlSink(
            dsn=pg_dsn,
            table=table,
            columns=["x", "y"],
            schema=f"CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, x integer, "
            "y text, version bigint)",
        )
        await sink.open()
        sql_sinks.append(sink)
        await sink.handle(landed)
        await sink.handle(await replay_of(redis, landed))
        assert sink.counts == {"applied": 1, "duplicate": 1}


@pytest.fixture
async def sql_sinks() -> AsyncIterator[list[SqlSink]]:
    sinks: list[SqlSink] = []
    yield sinks
    for s in sinks:
        await s.on_shutdown()
