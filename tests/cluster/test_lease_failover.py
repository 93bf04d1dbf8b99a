"""Partition leases through a failover that loses the last writes of a primary.

`RedisClusterServers.cut_replication` stops a primary's replica from replicating it, so every
write from then on (a lease taken, entries delivered, acknowledgements) is lost when the
replica is promoted: what asynchronous replication loses in the last moments before a crash,
made long enough to test. The handler applies each version of one key behind a version
guard, as the SQL sink and the projection do, in the test's memory, which no failover
touches: a version applied after a later one of its key is skipped, and so missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.cluster import failover as proof
from tests.helpers import eventually, make_settings
from worker import Handler, Message, Worker
from worker.partitions import partition_name
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

VERSIONS = 60


@dataclass
class Book:
    """A key's row with a version guard, and every version applied to it, in order."""

    last: int = 0
    applied: list[tuple[str, int]] = field(default_factory=list)


class Guarded(Handler):
    """Applies a version after `sleep` (a commit's latency) unless a later one is in."""

    name = "guarded"

    def __init__(self, book: Book, consumer: str, sleep: float) -> None:
        self.book, self.consumer, self.sleep = book, consumer, sleep

    async def handle(self, msg: Message) -> None:
        version = msg.version or 0
        if version <= self.book.last:
            return  # a redelivery of an applied version
        await asyncio.sleep(self.sleep)
        if version > self.book.last:  # the guard, checked and set in one step
            self.book.last = version
            self.book.applied.append((self.consumer, version))


def worker(servers: RedisClusterServers, stream: str, group: str, name: str, book: Book) -> Worker:
    handler = Guarded(book, name, sleep=0.05).bind([stream], partitions=1, ordered=True)
    settings = make_settings(
        servers.url, group, consumer=name, lease_ttl=20.0, batch_size=4, handler_timeout=5.0
    )
    return Worker(settings, [handler])


async def test_a_lease_lost_in_a_failover_is_not_run_by_two_workers(
    replicated_cluster: RedisClusterServers,
) -> None:
    with contextlib.ExitStack() as stack:
        await _two_owners_after_failover(replicated_cluster, stack)


def _refused(logs: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "lease.not_replicated" for e in logs)


async def _two_owners_after_failover(
    replicated_cluster: RedisClusterServers, stack: contextlib.ExitStack[Any]
) -> None:
    servers = replicated_cluster
    suffix = uuid.uuid4().hex[:8]
    stream, group = f"lease:{suffix}", f"group-{suffix}"
    partition = partition_name(stream, 0)
    nodes = proof.Nodes(servers)
    book = Book()
    logs = stack.enter_context(capture_logs())
    tasks: list[asyncio.Task[None]] = []
    workers: list[Worker] = []
    try:
        published = proof.Published()
        for version in range(1, VERSIONS + 1):  # every event held by the replica
            await proof.publish_confirmed(nodes, stream, "k", version, published, parts=1)
        # Given a worker that took the partition's lease after its replica stopped
        # replicating: the lease, the deliveries and the acks exist on the primary alone
        primary = servers.primary_of(partition)
        await asyncio.to_thread(servers.cut_replication, primary)
        workers.append(worker(servers, stream, group, "a", book))
        tasks.append(asyncio.create_task(workers[0].run()))
        # (or, refusing to trust a lease no replica confirmed, it waits)
        await eventually(lambda: len(book.applied) >= 3 or _refused(logs), timeout=30)
        # When the primary fails over, and another worker starts
        await asyncio.to_thread(servers.fail_over, primary)
        workers.append(worker(servers, stream, group, "b", book))
        tasks.append(asyncio.create_task(workers[1].run()))
        # Then every version is applied once, in order: never by two workers at a time
        await eventually(lambda: book.last == VERSIONS, timeout=60)
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await nodes.close()
    versions = [v for _, v in book.applied]
    missing = sorted(set(range(1, VERSIONS + 1)) - set(versions))
    assert versions == list(range(1, VERSIONS + 1)), f"skipped as stale: {missing}"


async def test_acks_lost_in_a_failover_do_not_stay_pending_with_the_owner(
    replicated_cluster: RedisClusterServers,
) -> None:
    """The owner keeps its (replicated) lease through the failover; the acks it sent while
    the replica was cut off are lost, so those entries are pending again on the promoted
    replica: the owner must finish them, since no other worker may touch its partition."""
    servers = replicated_cluster
    suffix = uuid.uuid4().hex[:8]
    stream, group = f"acks:{suffix}", f"group-{suffix}"
    partition = partition_name(stream, 0)
    nodes = proof.Nodes(servers)
    book = Book()
    owner = worker(servers, stream, group, "a", book)
    task = asyncio.create_task(owner.run())
    try:
        published = proof.Published()
        for version in range(1, 61):
            await proof.publish_confirmed(nodes, stream, "k", version, published, parts=1)
        # Given an owner whose acks of the last moments exist on the primary alone
        await eventually(lambda: len(book.applied) >= 10, timeout=30)
        primary = servers.primary_of(partition)
        await asyncio.to_thread(servers.cut_replication, primary)
        await eventually(lambda: len(book.applied) >= 20, timeout=30)
        # When the primary fails over
        await asyncio.to_thread(servers.fail_over, primary)
        # Then the owner applies the rest, and nothing stays pending
        await eventually(lambda: book.last == 60, timeout=30)

        async def nothing_pending() -> bool:
            summary = await nodes.call(partition, "XPENDING", partition, group)
            return int(summary["pending"]) == 0

        await eventually(nothing_pending, timeout=20)
    finally:
        owner.stop()
        await asyncio.wait_for(task, 30)
        await nodes.close()
    assert [v for _, v in book.applied] == list(range(1, 61))
