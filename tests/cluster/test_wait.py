"""`wait_replicas` on a Redis Cluster: the publisher's XADD and WAIT go on one connection to
the primary of the entry's slot, so an entry the publisher was told about is on that
primary's replica; a projection or relay whose effect lives in another slot than its stream
acknowledges an event only once the effect's replica holds it. A real cluster of 3 primaries
with a replica each, shared by the module; a replica is stopped (SIGSTOP, by pid) to make
WAIT time out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from handlers.projection import Projection
from handlers.relay import Relay
from tests.cluster.conftest import client_of, started_cluster
from tests.cluster.replicas import entry_ids, on_replica, replica_of, stopped
from tests.handlers.events import PROJECTION_EVENTS, Event, delivered
from tests.helpers import eventually, make_settings, pending_count, running
from worker import EffectNotReplicated, NotReplicated, Publisher
from worker.cli import main
from worker.keys import colocated, key_slot
from worker.partitions import stream_for
from worker.redis_cluster import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.fixture(scope="module")
def servers() -> Iterator[RedisClusterServers]:
    """One replicated cluster for the module's tests, none of which kills a primary."""
    yield from started_cluster(1)


@pytest.fixture
async def client(servers: RedisClusterServers) -> AsyncIterator[Redis]:
    async with client_of(servers) as redis:
        yield redis


@pytest.fixture
def stream() -> str:
    return f"orders:{uuid.uuid4().hex[:10]}"


async def test_a_confirmed_entry_is_on_the_replica_of_its_slot(
    servers: RedisClusterServers, client: Redis, stream: str
) -> None:
    publisher = Publisher(client, wait_replicas=1, wait_timeout=5, partitions={"parts": 3})
    entry_id = await publisher.publish(stream, "order.created", {"id": 1}, key="o-1")

    assert on_replica(servers, stream) == [entry_id]
    # A partitioned stream: each entry waits on the primary of its own partition's slot.
    keys = {stream_for("parts", f"k{n}", 3): f"k{n}" for n in range(12)}  # one key per partition
    assert len({key_slot(p) for p in keys}) == 3
    for partition, key in keys.items():
        before = on_replica(servers, partition)
        published = await publisher.publish("parts", "t", {}, key=key)
        assert on_replica(servers, partition) == [*before, published]


async def test_an_unconfirmed_entry_raises_and_the_command_exits_1(
    servers: RedisClusterServers,
    client: Redis,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the replica of the stream's primary stopped, WAIT times out: NotReplicated names
    the entry, which is on the primary; the command prints its id and exits 1."""
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", servers.url)
    publisher = Publisher(client, wait_replicas=1, wait_timeout=0.1)
    with stopped(replica_of(servers, servers.primary_of(stream))):
        for _ in range(4):  # a WAIT sent to another node would get a confirmation
            with pytest.raises(NotReplicated) as raised:
                await publisher.publish(stream, "order.created", {"id": 2})
        code = await asyncio.to_thread(
            main,
            ["publish", stream, "--type", "t", "--data", "{}", "--wait-replicas", "1",
             "--wait-timeout", "0.3"],
        )  # fmt: skip
    servers.wait_synced()

    assert (raised.value.stream, raised.value.acknowledged, raised.value.wanted) == (stream, 0, 1)
    out, err = capsys.readouterr()
    assert code == 1
    printed = out.strip()
    assert f"{stream} {printed}: 0 of 1 replicas confirmed" in err
    ids = await entry_ids(client, stream)
    assert len(ids) == 5 and ids[-2:] == [raised.value.entry_id, printed]


async def test_a_stale_slot_map_is_followed_to_the_right_primary(
    servers: RedisClusterServers, client: Redis, stream: str
) -> None:
    """The client maps the stream's slot to another primary (as after a resharding it has not
    seen yet): that node answers MOVED, and XADD and WAIT go to the slot's owner."""
    cluster: RedisCluster = client  # type: ignore[assignment]
    await cluster.initialize()
    slot = key_slot(stream)
    owner = cluster.get_node_from_key(stream)
    wrong = next(n for n in cluster.get_primaries() if n != owner)
    cluster.nodes_manager.slots_cache[slot] = [wrong]

    entry_id = await Publisher(client, wait_replicas=1, wait_timeout=5).publish(stream, "t", {})

    assert on_replica(servers, stream) == [entry_id]
    assert cluster.get_node_from_key(stream) == owner


async def test_a_slot_in_migration_is_written_where_ask_points(
    servers: RedisClusterServers, client: Redis, stream: str
) -> None:
    """While the stream's slot migrates to another primary, a new key is created there (ASK):
    ASKING, XADD and WAIT go to the importing node, and its replica confirms the entry."""
    import redis as sync_redis

    slot = key_slot(stream)
    source = servers.primary_of(stream)
    target = next(s for s in servers.primaries if s is not source)
    ids = {}
    for server in (source, target):
        with sync_redis.Redis(port=server.port) as admin:
            ids[server.port] = admin.cluster("MYID")
    with sync_redis.Redis(port=target.port) as admin:
        admin.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
    with sync_redis.Redis(port=source.port) as admin:
        admin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
    try:
        entry_id = await Publisher(client, wait_replicas=1, wait_timeout=5).publish(stream, "t", {})
        with sync_redis.Redis(port=replica_of(servers, target).port) as replica:
            # KEYS looks at the replica's own data: no redirection while the slot moves.
            assert replica.keys(stream) == [stream.encode()]
    finally:
        for server in servers.primaries:  # finish the migration: the slot is the target's
            with sync_redis.Redis(port=server.port) as admin:
                admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
    assert servers.primary_of(stream) is target
    assert await entry_ids(client, stream) == [entry_id]


async def test_a_confirmed_entry_survives_the_failover_of_its_primary(
    replicated_cluster: RedisClusterServers,
) -> None:
    """The stream's primary is SIGKILLed right after a confirmed publish: the promoted replica
    has the entry. The next publish finds the new primary (the old one refuses connections,
    the slot map is read again); it has no replica left, so WAIT there confirms nothing."""
    stream = f"orders:{uuid.uuid4().hex[:10]}"
    nodes = [ClusterNode("127.0.0.1", s.port) for s in replicated_cluster.primaries]
    client = RedisCluster(startup_nodes=nodes)
    try:
        publisher = Publisher(client, wait_replicas=1, wait_timeout=5)  # type: ignore[arg-type]
        entry_id = await publisher.publish(stream, "order.paid", {"id": 3})

        promoted = replicated_cluster.fail_over(replicated_cluster.primary_of(stream))

        async with Redis(port=promoted.port) as new_primary:
            assert [e[0].decode() for e in await new_primary.xrange(stream)] == [entry_id]
        publisher.wait_timeout = 0.1
        with pytest.raises(NotReplicated) as raised:
            await publisher.publish(stream, "order.paid", {"id": 4})
        assert raised.value.acknowledged == 0
        async with Redis(port=promoted.port) as new_primary:
            ids = [e[0].decode() for e in await new_primary.xrange(stream)]
        assert ids == [entry_id, raised.value.entry_id]
    finally:
        await client.aclose()


def elsewhere(client: Redis, anchor: str, stem: str) -> str:
    """A name under `stem` that lives on another primary than `anchor`."""
    cluster: RedisCluster = client  # type: ignore[assignment]
    home = cluster.get_node_from_key(anchor)
    n = 0
    while cluster.get_node_from_key(f"{stem}{n}") == home:
        n += 1
    return f"{stem}{n}"


async def test_a_projection_acks_only_once_the_replica_holds_the_effect(
    servers: RedisClusterServers, client: Redis
) -> None:
    """The entity lives on another primary than the stream, whose replica is stopped: the
    worker applies the event on the primary but does not ack it, retrying it without spending
    its attempts (2 here) and without dead-lettering it; once the replica runs again the
    event is acked, applied once."""
    await client.initialize()  # type: ignore[attr-defined]
    run = uuid.uuid4().hex[:8]
    stream, group, prefix = f"{run}:orders", f"g-{run}", f"{run}:item:"
    entity = elsewhere(client, stream, prefix)
    key = entity[len(prefix) :]
    projection = Projection(
        prefix=prefix, events=PROJECTION_EVENTS, wait_replicas=1, wait_timeout=0.2
    ).bind([stream])
    settings = make_settings(servers.url, group, consumer="c1", max_attempts=2)
    async with running(settings, [projection]) as worker:
        with stopped(replica_of(servers, servers.primary_of(entity))):
            await client.xadd(stream, Event("item.set", key, 1, {"x": 1}).fields())  # type: ignore[arg-type]
            await eventually(lambda: worker.stats.redis_errors["handler"] >= 3)
            assert await client.hgetall(entity) == {b"x": b"1"}  # on the primary
            assert await pending_count(client, stream, group) == 1
        await eventually(lambda: _pending_is_zero(client, stream, group))
    servers.wait_synced()

    assert await client.hgetall(entity) == {b"x": b"1"}
    counts = await client.hgetall(colocated(entity, projection.counts_key))  # type: ignore[attr-defined]
    assert counts[b"applied"] == b"1"
    assert not await client.exists(settings.dead_letter_stream(stream))


async def test_a_relay_leaves_events_pending_until_the_replica_holds_their_entries(
    servers: RedisClusterServers, client: Redis
) -> None:
    """The target stream lives on another primary than the source, whose replica is stopped:
    a batch's entries are written there in one call but not acked (EffectNotReplicated); the
    next batch, within wait_timeout of the miss, is deferred without being written (its WAIT
    would time out too). With the replica back they are forwarded, each once, and acked."""
    await client.initialize()  # type: ignore[attr-defined]
    run = uuid.uuid4().hex[:8]
    stream = f"{run}:in"
    target = elsewhere(client, stream, f"{run}:out")
    group = f"g-{run}"
    for key in ("k1", "k2", "k3"):
        await client.xadd(stream, Event("item.set", key, 1, {}).fields())  # type: ignore[arg-type]
    msgs = await delivered(client, stream, group, 3)
    relay = Relay(to=target, wait_replicas=1, wait_timeout=1.0)
    relay.use(client)
    async with Redis(port=servers.primary_of(target).port) as primary:
        await primary.script_flush()  # the script and WAIT share a connection: load it there

    with stopped(replica_of(servers, servers.primary_of(target))):
        first, second = await relay.handle_batch(msgs[:2])
        (third,) = await relay.handle_batch(msgs[2:])
        assert await pending_count(client, stream, group) == 3
        assert len(await client.xrange(target)) == 2
    servers.wait_synced()
    assert all(isinstance(o, EffectNotReplicated) for o in (first, second, third))
    assert isinstance(first, EffectNotReplicated) and isinstance(second, EffectNotReplicated)
    assert (first.target, first.message_id, first.acknowledged) == (target, msgs[0].id, 0)
    assert second.message_id == msgs[1].id

    async def settled() -> bool:
        return await relay.handle_batch(msgs) == [None, None, None]

    await eventually(settled)  # deferred for wait_timeout after the miss, then confirmed
    assert await pending_count(client, stream, group) == 0
    entries = await client.xrange(target)
    assert [fields[b"source_id"].decode() for _, fields in entries] == [m.id for m in msgs]
    assert on_replica(servers, target) == [entry_id.decode() for entry_id, _ in entries]
    assert relay.counts["forwarded"] == 1 and relay.counts["duplicate"] == 2


async def _pending_is_zero(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


async def test_a_user_without_wait_is_told_so(servers: RedisClusterServers, stream: str) -> None:
    """WAIT refused by the ACL is an error of its own (NOPERM), not a missing replica: the
    entry is written, the publisher raises Redis's refusal."""
    import redis as sync_redis
    from redis.exceptions import NoPermissionError

    user = f"nowait-{uuid.uuid4().hex[:6]}"
    for server in servers.primaries:
        with sync_redis.Redis(port=server.port) as admin:
            admin.acl_setuser(
                user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-wait"]
            )
    nodes = [ClusterNode("127.0.0.1", s.port) for s in servers.primaries]
    limited = RedisCluster(startup_nodes=nodes, username=user, password="pw")
    try:
        publisher = Publisher(limited, wait_replicas=1)  # type: ignore[arg-type]
        with pytest.raises(NoPermissionError, match="wait"):
            await publisher.publish(stream, "t", {})
        assert len(await limited.xrange(stream)) == 1
    finally:
        await limited.aclose()
