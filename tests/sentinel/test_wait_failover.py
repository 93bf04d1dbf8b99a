"""A primary dies under load and Sentinel promotes a replica: what was confirmed survives.

One primary, two replicas and three sentinels, all real processes on free ports. A producer
publishes through Sentinel discovery with `wait_replicas=1`; the primary is SIGKILLed
mid-run. Every event the producer was told about (a returned entry id) must be on the new
primary; events that raised are the producer's to publish again, as it does here. Sentinel
promotes the replica with the largest replication offset, so one replica's confirmation is
enough; the second replica lets WAIT be satisfied after the failover, without bringing the
dead primary back (a primary restarted empty can be resynchronised from by its replicas).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

from tests.helpers import eventually
from worker import NotReplicated, Publisher
from worker.redis_cluster import SentinelServers

pytestmark = [
    pytest.mark.redis,
    pytest.mark.sentinel,
    # redis-py drops its connections to the killed primary unclosed (see conftest.py)
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

STREAM = "orders"


@pytest.fixture
def sentinels() -> Iterator[SentinelServers]:
    with SentinelServers(replicas=2, sentinels=3) as setup:
        setup.wait_synced()
        yield setup


async def publish_until_confirmed(publisher: Publisher, n: int) -> None:
    """Publish event `n` until a replica confirms it, as a careful producer does."""
    while True:
        try:
            await publisher.publish(STREAM, "order.created", {"n": n}, event_id=f"e-{n}")
            return
        except (ConnectionError, TimeoutError, ReadOnlyError, NotReplicated, OSError):
            await asyncio.sleep(0.05)


async def test_confirmed_events_survive_a_failover(sentinels: SentinelServers) -> None:
    discovery = Sentinel([("127.0.0.1", s.port) for s in sentinels.sentinels], socket_timeout=1.0)  # type: ignore[no-untyped-call]
    primary = discovery.master_for(sentinels.service, socket_timeout=1.0)
    publisher = Publisher(primary, wait_replicas=1, wait_timeout=0.5)
    confirmed: list[int] = []

    async def produce() -> None:
        for n in range(300):
            await publish_until_confirmed(publisher, n)
            confirmed.append(n)
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(produce())
    try:
        await eventually(lambda: len(confirmed) >= 100, timeout=30)
        old = sentinels.primary.port
        assert sentinels.primary_port() == old
        sentinels.primary.stop(signal.SIGKILL)
        await asyncio.wait_for(producer, timeout=90)
        new = await asyncio.to_thread(sentinels.primary_port)
        assert new != old
        async with Redis(port=new) as promoted:
            entries = await promoted.xrange(STREAM)
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        await primary.aclose()
        for client in discovery.sentinels:
            await client.aclose()

    published = {fields[b"event_id"].decode() for _, fields in entries}
    lost = [n for n in confirmed if f"e-{n}" not in published]
    assert lost == [], f"confirmed with WAIT but lost in the failover: {lost[:10]}"
    assert len(confirmed) == 300
