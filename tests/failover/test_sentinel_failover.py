"""A primary dies under load and Sentinel promotes its replica: what was confirmed survives.

One primary, one replica and three Sentinels, all real processes on free ports. A producer
publishes through Sentinel discovery with `wait_replicas=1`; the primary is SIGKILLed
mid-run. Every event the producer was told about (a returned entry id) must be on the new
primary; events that raised are the producer's to publish again, as it does here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

from worker import NotReplicated, Publisher
from worker.redis_replicas import SERVICE, SentinelSetup

pytestmark = pytest.mark.redis

STREAM = "orders"


@pytest.fixture
def sentinels() -> Iterator[SentinelSetup]:
    with SentinelSetup(replicas=1, sentinels=3, down_after=1.0) as setup:
        yield setup


async def publish_until_confirmed(publisher: Publisher, n: int) -> None:
    """Publish event `n` until a replica confirms it, as a careful producer does."""
    while True:
        try:
            await publisher.publish(STREAM, "order.created", {"n": n}, event_id=f"e-{n}")
            return
        except (ConnectionError, TimeoutError, ReadOnlyError, NotReplicated, OSError):
            await asyncio.sleep(0.05)


async def test_confirmed_events_survive_a_failover(sentinels: SentinelSetup) -> None:
    discovery = Sentinel(
        [("127.0.0.1", port) for port in sentinels.sentinel_ports], socket_timeout=1.0
    )
    primary = discovery.master_for(SERVICE, socket_timeout=1.0)
    publisher = Publisher(primary, wait_replicas=1, wait_timeout=0.5)
    confirmed: list[int] = []

    async def produce() -> None:
        for n in range(400):
            await publish_until_confirmed(publisher, n)
            confirmed.append(n)
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(produce())
    while len(confirmed) < 100:
        await asyncio.sleep(0.01)
    old_port = sentinels.primary_port()
    killed = sentinels.kill_primary()
    assert killed.port == old_port
    new_port = await asyncio.to_thread(sentinels.wait_for_failover, old_port)
    # The old primary comes back empty; Sentinel turns it into the new primary's replica, so
    # WAIT can be satisfied again and the producer finishes.
    killed.start()
    await asyncio.wait_for(producer, timeout=60)

    assert new_port != old_port
    entries = await primary.xrange(STREAM)
    published = {fields[b"event_id"].decode() for _, fields in entries}
    lost = [n for n in confirmed if f"e-{n}" not in published]
    assert lost == [], f"confirmed with WAIT but lost in the failover: {lost[:10]}"
    assert len(confirmed) == 400
    await primary.aclose()
    for client in discovery.sentinels:
        await client.aclose()
