"""Parts of the cluster failover proof: confirmed publishing, the sink's table with its log,
and a fleet of worker processes under SIGKILL.

The test talks to each partition's primary over a plain connection of its own (found with
`RedisClusterServers.primary_of`, which asks every node about itself), so that what it checks
does not depend on the cluster client it is testing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.helpers import WorkerProcess
from worker.partitions import stream_for
from worker.publish import event_fields
from worker.redis_cluster import RedisClusterServers

LONG = os.environ.get("SYNCWORKER_CHAOS_LONG", "") not in ("", "0")
"""`SYNCWORKER_CHAOS_LONG=1`: seven times the publishing time, two failovers, more kills."""

SEED = int(os.environ.get("SYNCWORKER_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
"""The run's seed; `SYNCWORKER_CHAOS_SEED=<n>` replays its events and fault schedule."""

PARTS = 6
KEYS = 24
WORKERS = 3
PUBLISH_S = 84.0 if LONG else 12.0
PAUSE_S = (0.0, 0.01)
"""Pause between two events (seeded): about 150 events a second."""
KILL_EVERY_S = (1.0, 2.5)
RESTART_AFTER_S = (0.2, 1.0)
FAILOVERS = 2 if LONG else 1
CUT_S = (0.2, 1.0)
"""How long (seeded) a primary's replica stops replicating before the primary is killed: the
writes of that moment are lost in the failover."""
LEASE_TTL = 4.0

MOVED_ON = (RedisConnectionError, RedisTimeoutError, ConnectionResetError, OSError)


class Nodes:
    """A plain connection to the primary of each partition, found again after a failover."""

    def __init__(self, servers: RedisClusterServers) -> None:
        self.servers = servers
        self._clients: dict[int, Redis] = {}
        self._port: dict[str, int] = {}
        self.promoted: set[int] = set()
        """Ports of replicas the test promoted: primaries left without a replica."""

    def port(self, key: str) -> int | None:
        return self._port.get(key)

    async def of(self, key: str, *, fresh: bool = False) -> Redis:
        """The client of `key`'s primary; `fresh` asks the nodes again (after an error)."""
        if fresh or key not in self._port:
            self._port[key] = await self._find(key)
        port = self._port[key]
        if port not in self._clients:
            self._clients[port] = Redis(port=port, socket_timeout=5)
        return self._clients[port]

    async def _find(self, key: str) -> int:
        deadline = time.monotonic() + 30
        while True:
            try:
                server = await asyncio.to_thread(self.servers.primary_of, key)
                return server.port
            except (RuntimeError, *MOVED_ON):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def call(self, key: str, *args: Any) -> Any:
        """One command on `key`'s primary, retried on the new one after a failover."""
        fresh = False
        while True:
            client = await self.of(key, fresh=fresh)
            try:
                return await client.execute_command(*args)
            except (*MOVED_ON, ResponseError) as exc:
                if isinstance(exc, ResponseError) and not _redirected(exc):
                    raise
                fresh = True
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def _redirected(exc: ResponseError) -> bool:
    return str(exc).split(" ", 1)[0] in ("MOVED", "ASK", "CLUSTERDOWN", "READONLY", "TRYAGAIN")


@dataclass
class Published:
    """The events the test knows a replica holds, per key in publishing order."""

    versions: dict[str, list[int]] = field(default_factory=dict)
    retried: int = 0
    """Events whose XADD or WAIT failed on a dying primary and that were checked (and, when
    missing, added again) on the promoted one."""

    def add(self, key: str, version: int) -> None:
        self.versions.setdefault(key, []).append(version)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.versions.values())


async def publish_confirmed(
    nodes: Nodes, stream: str, key: str, version: int, published: Published, parts: int = PARTS
) -> None:
    """XADD the event to its partition's primary, then WAIT 1 on the same connection until a
    replica holds it (a replica the test promoted has no replica left, and cannot lose it to
    another failover: it is confirmed once the primary has it). If the primary dies on the way, the
    promoted replica is asked whether the event made it (the partition's last entry is this
    one: one publisher per test, in order); if not, it is added there again."""
    partition = stream_for(stream, key, parts)
    event_id = f"{key}-{version}"
    fields = event_fields("item.set", {"v": version}, key=key, version=version, event_id=event_id)
    args = [a for pair in fields.items() for a in pair]
    fresh = False
    while True:
        client = await nodes.of(partition, fresh=fresh)
        try:
            if not fresh or not await _last_is(client, partition, event_id):
                await client.execute_command("XADD", partition, "*", *args)
            while int(await client.execute_command("WAIT", 1, 1000)) < 1:
                if nodes.port(partition) in nodes.promoted:
                    break  # the promoted replica of a failed shard: nothing to fail over to
            published.add(key, version)
            return
        except (*MOVED_ON, ResponseError) as exc:
            if isinstance(exc, ResponseError) and not _redirected(exc):
                raise
            fresh = True
            published.retried += 1
            await asyncio.sleep(0.05)


async def _last_is(client: Redis, partition: str, event_id: str) -> bool:
    last = await client.xrevrange(partition, count=1)
    return bool(last) and last[0][1].get(b"event_id") == event_id.encode()


async def create_sink_table(dsn: str, table: str) -> None:
    """The sink's table, and a log of every change made to it, by trigger: which key, which
    version, in which order (a serial), by which worker (its connection's application_name)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, v bigint, version bigint)")
        await conn.execute(
            f"CREATE TABLE {table}_log (id bigserial PRIMARY KEY, key text, version bigint, "
            "app text DEFAULT current_setting('application_name'))"
        )
        await conn.execute(
            f"""CREATE FUNCTION {table}_log() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {table}_log (key, version) VALUES (NEW.key, NEW.version);
                RETURN NULL;
            END $$"""
        )
        await conn.execute(
            f"CREATE TRIGGER {table}_log AFTER INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_log()"
        )


def sink_worker(
    servers: RedisClusterServers, dsn: str, stream: str, group: str, table: str, name: str
) -> WorkerProcess:
    """`syncworker run` with the SQL sink on the ordered, partitioned route.

    One event per transaction (`batch = false`), so that the log holds every version the
    sink applies. The sink's own guards stay on: its inbox applies each entry once, and its
    version guard skips a version older than the row's, so a version run after a later one
    of its key is missing from the log (its inbox row says it ran)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    route = {
        "stream": stream,
        "handler": "sql",
        "partitions": PARTS,
        "ordered": True,
        "options": {
            "table": table,
            "key_column": "key",
            "columns": ["v"],
            "batch": False,
        },
    }
    named = make_conninfo(**{**conninfo_to_dict(dsn), "application_name": name})
    return WorkerProcess(
        servers.url, group, stream, name,
        SYNCWORKER_ROUTES=json.dumps([route]),
        SYNCWORKER_POSTGRES_DSN=named,
        SYNCWORKER_LEASE_TTL=str(LEASE_TTL),
        SYNCWORKER_HANDLER_TIMEOUT="5",
        SYNCWORKER_REDIS_TIMEOUT="2",
    )  # fmt: skip


def started(worker: WorkerProcess) -> bool:
    return '"worker.started"' in worker.output()


def alive(worker: WorkerProcess) -> bool:
    return worker.process is not None and worker.process.returncode is None


@dataclass
class Fleet:
    """The worker processes; `witness` is never killed (it shows that a worker that lived
    through the failover kept working without a restart)."""

    servers: RedisClusterServers
    dsn: str
    stream: str
    group: str
    table: str
    rng: random.Random
    workers: list[WorkerProcess] = field(default_factory=list)
    witness: str = ""
    kills: int = 0
    _spawned: int = 0

    async def spawn(self) -> WorkerProcess:
        self._spawned += 1
        name = f"w{self._spawned}"
        worker = sink_worker(self.servers, self.dsn, self.stream, self.group, self.table, name)
        self.workers.append(await worker.start())
        return worker

    async def kill_now_and_then(self, until: float) -> None:
        """SIGKILL a running worker other than the witness every few seconds (seeded), and
        start a new one in its place after a seeded delay."""
        while True:
            await asyncio.sleep(self.rng.uniform(*KILL_EVERY_S))
            if time.monotonic() >= until:
                return
            up = [w for w in self.workers if alive(w) and started(w)]
            victims = [w for w in up if w.env["SYNCWORKER_CONSUMER"] != self.witness]
            if not victims:
                continue
            victim = self.rng.choice(victims)
            await victim.kill()
            self.kills += 1
            await asyncio.sleep(self.rng.uniform(*RESTART_AFTER_S))
            await self.spawn()

    def living(self) -> list[WorkerProcess]:
        return [w for w in self.workers if alive(w)]
