"""`wait_replicas` off a cluster: on one primary the effect and its ack replicate together,
so the projection and relay wait for nothing (a server without replicas would otherwise
never confirm) and settle events as before."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from handlers.projection import Projection
from handlers.relay import Relay
from tests.handlers.events import PROJECTION_EVENTS, Event, delivered
from tests.helpers import pending_count

pytestmark = pytest.mark.redis


async def test_one_primary_without_replicas_acks_at_once(redis: Redis) -> None:
    run = uuid.uuid4().hex[:8]
    stream = f"{run}:in"
    await redis.xadd(stream, Event("item.set", "k", 1, {"x": 1}).fields())  # type: ignore[arg-type]
    (msg,) = await delivered(redis, stream, "g", 1)
    projection = Projection(
        prefix=f"{run}:item:", events=PROJECTION_EVENTS, ack=False, wait_replicas=1
    )
    projection.use(redis)
    relay = Relay(to=f"{run}:out", wait_replicas=2, wait_timeout=60)
    relay.use(redis)

    await projection.handle(msg)  # would raise EffectNotReplicated if it waited
    await relay.handle(msg)

    assert await redis.hgetall(f"{run}:item:k") == {b"x": b"1"}
    assert await redis.xlen(f"{run}:out") == 1
    assert await pending_count(redis, stream, "g") == 0  # the relay acked in its script


@pytest.mark.parametrize(
    "options",
    [{"wait_replicas": -1}, {"wait_replicas": 1.5}, {"wait_replicas": 1, "wait_timeout": 0}],
)
def test_wait_options_are_checked(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="wait_"):
        Projection(prefix="p:", events=PROJECTION_EVENTS, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait_"):
        Relay(to="out", **options)  # type: ignore[arg-type]
