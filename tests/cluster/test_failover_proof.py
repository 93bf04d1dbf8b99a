"""The runtime's and the SQL sink's guarantees on a Redis Cluster while workers are SIGKILLed
and a primary that holds partitions (and their leases) fails over.

A cluster of 3 primaries with a replica each; an ordered route of 6 partitions spread over the
3 shards, applied by the built-in SQL sink (one event per transaction, inbox and version guard
on) in 3 `syncworker run` processes. The test publishes versions 1, 2, ... of 24 keys, each
event confirmed by a replica (XADD then WAIT 1 on the same connection to the partition's
primary), while workers other than one witness are SIGKILLed at seeded times and replaced,
and a primary holding a partition the witness leases is SIGKILLed and its replica promoted.

PostgreSQL does not fail over, so a trigger log on the sink's table is the ground truth:

- each key's log is exactly its published versions, in order: every confirmed event applied
  exactly once, and none after a later one of its key (the sink's version guard would skip
  it: it would be missing);
- nothing is pending in any partition's group, no dead letter;
- the witness, which lived through the failover without a restart, applies events after it
  (a last version of every key, published once the fleet has settled).

Seeded (`SYNCWORKER_CHAOS_SEED` replays the events and the fault schedule; the seed is
printed); `SYNCWORKER_CHAOS_LONG=1` publishes for 84 s instead of 12, with two failovers.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster import failover as proof
from tests.helpers import eventually
from worker.keys import key_slot
from worker.partitions import partition_names, stream_for
from worker.redis_cluster import RedisClusterServers
from worker.runtime.leases import lease_key

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.postgres]


@dataclass
class Failover:
    port: int
    """The killed primary's port."""
    partitions: list[str]
    """The partitions it served."""
    witness_owned: list[str]
    """Those of them the witness leased when it was killed."""
    log_mark: int
    """The trigger log's last id once the replica had taken over."""


@pytest.mark.timeout(900 if proof.LONG else 180)
async def test_confirmed_events_apply_once_in_key_order_through_kills_and_a_failover(
    replicated_cluster: RedisClusterServers, pg_dsn: str
) -> None:
    seed = proof.SEED
    print(f"\ncluster failover proof seed {seed} (replay: SYNCWORKER_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    servers = replicated_cluster
    stream, group, table = _names(servers)
    await proof.create_sink_table(pg_dsn, table)
    nodes = proof.Nodes(servers)
    fleet = proof.Fleet(servers, pg_dsn, stream, group, table, random.Random(rng.random()))
    try:
        # Given three workers sharing the six partitions
        for _ in range(proof.WORKERS):
            await fleet.spawn()
        await eventually(lambda: all(map(proof.started, fleet.workers)), timeout=60)
        fleet.witness = rng.choice([w.env["SYNCWORKER_CONSUMER"] for w in fleet.workers])
        # When events flow while workers are killed and a primary fails over
        published = proof.Published()
        failovers: list[Failover] = []
        began = time.monotonic()
        until = began + proof.PUBLISH_S
        await asyncio.gather(
            _produce(nodes, stream, random.Random(rng.random()), published, until),
            fleet.kill_now_and_then(until),
            _fail_over(servers, nodes, pg_dsn, stream, group, table, fleet, rng, failovers),
        )
        # Then every confirmed event is applied, and nothing stays pending
        await eventually(lambda: _all_applied(pg_dsn, table, published), timeout=60)
        drained_s = time.monotonic() - until
        await eventually(lambda: _nothing_pending(nodes, stream, group), timeout=30)
        # And the witness, alive through the failover, still reads and applies: once the fleet
        # has settled it leases partitions again, and a last version of every key (confirmed)
        # reaches them. Whether it applied anything during the chaos depends on how leases
        # moved then; now, with three workers on six partitions, it owns its share.
        await eventually(lambda: _leases_of(nodes, stream, group, fleet.witness), timeout=30)
        final_mark = (await _log(pg_dsn, table))[-1][0]
        for key, versions in sorted(published.versions.items()):
            await proof.publish_confirmed(nodes, stream, key, versions[-1] + 1, published)
        await eventually(lambda: _all_applied(pg_dsn, table, published), timeout=30)
        log = await _log(pg_dsn, table)
        for worker in fleet.living():
            worker.signal(15)
        codes = [await w.wait(30) for w in fleet.living()]
        dead_letters = [
            await nodes.call(p, "XLEN", f"{p}:dlq") for p in partition_names(stream, proof.PARTS)
        ]
    finally:
        await nodes.close()
    _report(published, fleet, failovers, log, drained_s)
    assert codes == [0] * len(codes)
    assert dead_letters == [0] * proof.PARTS
    _check_key_order(log, published)
    assert len(failovers) == proof.FAILOVERS
    final = [app for i, _, _, app in log if i > final_mark]
    assert fleet.witness in final, _witness_log(fleet)


def _witness_log(fleet: proof.Fleet) -> str:
    """What the witness logged besides the usual, to say why it stopped."""
    witness = next(w for w in fleet.workers if w.env["SYNCWORKER_CONSUMER"] == fleet.witness)
    lines = [
        line
        for line in witness.output().splitlines()
        if '"level": "info"' not in line or '"lease.' in line
    ]
    return "the witness stopped at the failover; its log:\n" + "\n".join(lines[-40:])


def _names(servers: RedisClusterServers) -> tuple[str, str, str]:
    """A stream whose 6 partitions sit on all three shards, a group, a table."""
    suffix = uuid.uuid4().hex[:10]
    for n in range(1000):
        stream = f"proof:{suffix}:{n}"
        count = len(servers.primaries)
        share = 16384 // count  # how RedisClusterServers splits the slots
        parts = partition_names(stream, proof.PARTS)
        shards = {min(key_slot(p) // share, count - 1) for p in parts}
        if len(shards) == count:
            return stream, f"group-{suffix}", f"sink_{suffix}"
    raise AssertionError("no stream name spreads its partitions over every shard")


async def _produce(
    nodes: proof.Nodes, stream: str, rng: random.Random, published: proof.Published, until: float
) -> None:
    """Versions 1, 2, ... of each key, keys drawn at random, each event confirmed."""
    last: dict[str, int] = defaultdict(int)
    keys = [f"k{n}" for n in range(proof.KEYS)]
    while time.monotonic() < until:
        key = rng.choice(keys)
        last[key] += 1
        await proof.publish_confirmed(nodes, stream, key, last[key], published)
        await asyncio.sleep(rng.uniform(*proof.PAUSE_S))


async def _fail_over(
    servers: RedisClusterServers, nodes: proof.Nodes, dsn: str, stream: str, group: str,
    table: str, fleet: proof.Fleet, rng: random.Random, failovers: list[Failover],
) -> None:  # fmt: skip
    """Fail over, at seeded times in the publishing's middle, a primary that still has a
    replica, preferring one that serves a partition the witness leases."""
    start = time.monotonic()
    for n in range(proof.FAILOVERS):
        share = (n + 1) / (proof.FAILOVERS + 1)
        at = start + proof.PUBLISH_S * share + rng.uniform(-1.0, 1.0)
        await asyncio.sleep(max(at - time.monotonic(), 0))
        partitions = partition_names(stream, proof.PARTS)
        owners = {p: await nodes.call(p, "GET", lease_key(p, group)) for p in partitions}
        by_port: dict[int, list[str]] = defaultdict(list)
        for p in partitions:
            by_port[(await asyncio.to_thread(servers.primary_of, p)).port].append(p)
        done = {f.port for f in failovers}
        replicated = [port for port in sorted(by_port) if port not in done | nodes.promoted]
        witness = fleet.witness.encode()
        leased = [port for port in replicated if any(owners[p] == witness for p in by_port[port])]
        port = rng.choice(leased or replicated)
        primary = next(s for s in servers.servers if s.port == port)
        # The replica stops replicating for a moment first, so that the failover loses the
        # writes of that moment (leases, deliveries, acks), as a crash loses the last ones.
        await asyncio.to_thread(servers.cut_replication, primary)
        await asyncio.sleep(rng.uniform(*proof.CUT_S))
        promoted = await asyncio.to_thread(servers.fail_over, primary)
        nodes.promoted.add(promoted.port)
        log = await _log(dsn, table)
        mark = log[-1][0] if log else 0
        mine = [p for p in by_port[port] if owners[p] == witness]
        failovers.append(Failover(port, by_port[port], mine, mark))


async def _leases_of(nodes: proof.Nodes, stream: str, group: str, consumer: str) -> bool:
    """Whether `consumer` holds the lease of some partition now."""
    for partition in partition_names(stream, proof.PARTS):
        owner = await nodes.call(partition, "GET", lease_key(partition, group))
        if owner == consumer.encode():
            return True
    return False


async def _log(dsn: str, table: str) -> list[tuple[int, str, int, str]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(f"SELECT id, key, version, app FROM {table}_log ORDER BY id")
        return [(int(i), k, int(v), a) for i, k, v, a in await cursor.fetchall()]


async def _all_applied(dsn: str, table: str, published: proof.Published) -> bool:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(f"SELECT key, version FROM {table}")
        rows = {k: int(v) for k, v in await cursor.fetchall()}
    return rows == {k: v[-1] for k, v in published.versions.items()}


async def _nothing_pending(nodes: proof.Nodes, stream: str, group: str) -> bool:
    for partition in partition_names(stream, proof.PARTS):
        summary: Any = await nodes.call(partition, "XPENDING", partition, group)
        if int(summary["pending"]):
            return False
    return True


def _check_key_order(log: list[tuple[int, str, int, str]], published: proof.Published) -> None:
    applied: dict[str, list[int]] = defaultdict(list)
    for _, key, version, _ in log:
        applied[key].append(version)
    wrong = {
        key: (versions, applied.get(key, []))
        for key, versions in published.versions.items()
        if applied.get(key, []) != versions
    }
    assert not wrong, f"{len(wrong)} keys not applied exactly once in order: {_diff(wrong)}"
    assert set(applied) <= set(published.versions)


def _diff(wrong: dict[str, tuple[list[int], list[int]]]) -> str:
    parts = []
    for key, (expected, got) in list(wrong.items())[:3]:
        missing = sorted(set(expected) - set(got))
        twice = sorted({v for v in got if got.count(v) > 1})
        parts.append(f"{key}: missing {missing[:10]}, twice {twice[:10]}")
    return "; ".join(parts)


def _report(
    published: proof.Published, fleet: proof.Fleet, failovers: list[Failover],
    log: list[tuple[int, str, int, str]], drained_s: float,
) -> None:  # fmt: skip
    print(
        f"cluster failover proof: {published.total} events confirmed "
        f"({published.retried} retried on a promoted replica), {len(log)} applied; "
        f"{fleet.kills} worker SIGKILLs; drained {drained_s:.1f}s after publishing ended"
    )
    logs = "".join(w.output() for w in fleet.workers)
    events = ("lease.lost", "lease.not_replicated", "lease.orphans_taken", "redis.unavailable")
    print(
        "  worker log events: "
        + ", ".join(f"{e} {logs.count(chr(34) + e + chr(34))}" for e in events)
    )
    for f in failovers:
        after = [(k, a) for i, k, _, a in log if i > f.log_mark]
        shard = {k for k, _ in after if stream_of_key_in(k, f.partitions)}
        print(
            f"  failover of :{f.port} ({len(f.partitions)} partitions, witness leased "
            f"{len(f.witness_owned)}): {len(after)} applied after it, "
            f"{sum(1 for _, a in after if a == fleet.witness)} by the witness {fleet.witness}; "
            f"keys of its partitions applied after: {len(shard)}"
        )


def stream_of_key_in(key: str, partitions: list[str]) -> bool:
    logical = partitions[0][1:].rsplit(":", 1)[0] if partitions else ""
    return stream_for(logical, key, proof.PARTS) in partitions
