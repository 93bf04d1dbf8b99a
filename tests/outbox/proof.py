"""Parts of the outbox proof: seeded producers, a fleet of relay processes under SIGKILL.

The producers write the way the outbox asks a service to: each transaction locks its
aggregates (SELECT ... FOR UPDATE), adds 1..N events with the next versions, bumps the
aggregates' versions, and commits, or (a share of them) rolls back. What committed and what
rolled back is recorded, so that the test can hold the stream and the sink against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import WorkerProcess
from worker.outbox import add
from worker.redis_server import RedisServer

LONG = os.environ.get("SYNCWORKER_CHAOS_LONG", "") not in ("", "0")
"""`SYNCWORKER_CHAOS_LONG=1`: eight times the producing time, and the kills with it."""

SEED = int(os.environ.get("SYNCWORKER_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
"""The run's seed; `SYNCWORKER_CHAOS_SEED=<n>` replays its transactions and kill schedule."""

PRODUCERS = 4
KEYS = 24
MAX_ROWS = 5
"""Rows per transaction: 1..MAX_ROWS."""
ROLLBACK_SHARE = 0.2
PRODUCE_S = 64.0 if LONG else 8.0
TX_PAUSE_S = (0.0, 0.06)
"""Pause between one producer's transactions (seeded): about 100 transactions a second in all."""
KILL_EVERY_S = (0.3, 1.0)
RESTART_AFTER_S = (0.0, 0.8)
LEADER_SHARE = 0.75
"""Share of the kills aimed at the leader (the rest hit a standby)."""


@dataclass
class Tx:
    """One producer transaction: its events as (event_id, key, version), and its fate."""

    id: str
    events: list[tuple[str, str, int]]
    committed: bool


@dataclass
class Ledger:
    """Everything the producers did, in the order their commits returned."""

    txs: list[Tx] = field(default_factory=list)

    def committed(self) -> list[Tx]:
        return [t for t in self.txs if t.committed]

    def rolled_back(self) -> list[Tx]:
        return [t for t in self.txs if not t.committed]


async def create_aggregates(dsn: str, table: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, version bigint NOT NULL)")
        await conn.execute(
            f"INSERT INTO {table} SELECT 'agg-' || n, 0 FROM generate_series(0, {KEYS - 1}) n"
        )


async def produce(
    dsn: str, outbox: str, aggregates: str, stream: str, rng: random.Random, ledger: Ledger,
    until: float,
) -> None:  # fmt: skip
    """One producer: transactions until `until` (monotonic), each recorded in `ledger`."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        while time.monotonic() < until:
            keys = sorted(rng.sample([f"agg-{n}" for n in range(KEYS)], rng.randint(1, 2)))
            rows = rng.randint(1, MAX_ROWS)
            commit = rng.random() >= ROLLBACK_SHARE
            tx = Tx(uuid.uuid4().hex[:12], [], commit)
            cursor = await conn.execute(
                f"SELECT key, version FROM {aggregates} WHERE key = ANY(%s) ORDER BY key "
                "FOR UPDATE",
                (keys,),
            )
            versions = {k: int(v) for k, v in await cursor.fetchall()}
            for i in range(rows):
                key = rng.choice(keys)
                versions[key] += 1
                event_id = f"{tx.id}-{i}"
                data = {"n": versions[key], "tx": tx.id}
                await add(
                    conn, stream, "agg.changed", data, key=key, version=versions[key],
                    event_id=event_id, table=outbox,
                )  # fmt: skip
                tx.events.append((event_id, key, versions[key]))
            for key, version in versions.items():
                await conn.execute(
                    f"UPDATE {aggregates} SET version = %s WHERE key = %s", (version, key)
                )
            if commit:
                await conn.commit()
            else:
                await conn.rollback()
            ledger.txs.append(tx)
            await asyncio.sleep(rng.uniform(*TX_PAUSE_S))


def relay_process(redis_server: RedisServer, dsn: str, table: str, name: str) -> WorkerProcess:
    """`syncworker outbox run` in a subprocess (batches of 50: more batches to crash in)."""
    process = WorkerProcess(redis_server.url, "unused", "unused", f"{name}-{uuid.uuid4().hex[:6]}")
    process.args = [
        sys.executable, "-m", "worker", "outbox", "run", "--dsn", dsn, "--table", table,
        "--poll-interval", "0.5", "--batch-size", "50",
    ]  # fmt: skip
    return process


def sink_worker(redis_server: RedisServer, dsn: str, stream: str, group: str, target: str) -> Any:
    """A worker running the SQL sink from `stream` into `target`."""
    routes = [
        {
            "stream": stream,
            "handler": "sql",
            "options": {"table": target, "key_column": "key", "columns": ["n", "tx"]},
        }
    ]
    return WorkerProcess(
        redis_server.url, group, stream, f"sink-{uuid.uuid4().hex[:6]}",
        SYNCWORKER_ROUTES=json.dumps(routes), SYNCWORKER_POSTGRES_DSN=dsn,
    )  # fmt: skip


async def create_target(dsn: str, target: str) -> None:
    """The sink's table, with a log of every change the sink makes to it (by trigger): an
    effect applied twice shows as two log rows."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {target} (key text PRIMARY KEY, n bigint, tx text, version bigint)"
        )
        await conn.execute(f"CREATE TABLE {target}_log (key text, version bigint, tx text)")
        await conn.execute(
            f"""CREATE FUNCTION {target}_log() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {target}_log VALUES (NEW.key, NEW.version, NEW.tx);
                RETURN NULL;
            END $$"""
        )
        await conn.execute(
            f"CREATE TRIGGER {target}_log AFTER INSERT OR UPDATE ON {target} "
            f"FOR EACH ROW EXECUTE FUNCTION {target}_log()"
        )


class RelayFleet:
    """Two relay replicas; SIGKILLs at seeded times, each followed by a restart."""

    def __init__(self, redis_server: RedisServer, dsn: str, table: str, rng: random.Random):
        self.redis_server, self.dsn, self.table, self.rng = redis_server, dsn, table, rng
        self.replicas: list[WorkerProcess] = []
        self.kills = 0
        self.takeovers: list[float] = []
        """Seconds from a leader's SIGKILL to a standby's `outbox.leading`."""
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for n in (1, 2):
            self.replicas.append(await self._spawn(f"relay{n}"))
        for replica in self.replicas:
            await _started(replica)

    async def _spawn(self, name: str) -> WorkerProcess:
        return await relay_process(self.redis_server, self.dsn, self.table, name).start()

    async def chaos(self, until: float) -> None:
        """Kill replicas until `until` (monotonic); each comes back after a seeded delay.

        Only replicas that run are killed (one killed while Python still imports would test
        nothing but the interpreter's start-up), so the kills go on while a victim restarts.
        """
        while True:
            await asyncio.sleep(self.rng.uniform(*KILL_EVERY_S))
            if time.monotonic() >= until:
                break
            up = [p for p in self.replicas if _up(p)]
            if not up:
                continue
            leaders = [p for p in up if "outbox.leading" in p.output()]
            aim_leader = self.rng.random() < LEADER_SHARE
            victims = leaders if aim_leader and leaders else up
            victim = victims[self.rng.randrange(len(victims))]
            index = self.replicas.index(victim)
            standby = self.replicas[1 - index]
            waiting = _up(standby) and "outbox.leading" not in standby.output()
            victim.process.kill()  # type: ignore[union-attr]
            killed = time.monotonic()
            await victim.wait()
            self.kills += 1
            if victim in leaders and waiting:
                self._tasks.append(asyncio.create_task(self._watch(standby, killed)))
            delay = self.rng.uniform(*RESTART_AFTER_S)
            self._tasks.append(asyncio.create_task(self._restart(index, delay)))
        for task in self._tasks:
            await task

    async def _restart(self, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        self.replicas[index] = await self._spawn(f"relay{index + 1}")

    async def _watch(self, standby: WorkerProcess, killed: float) -> None:
        while time.monotonic() - killed < 15:
            if "outbox.leading" in standby.output():
                self.takeovers.append(time.monotonic() - killed)
                return
            if standby.process is None or standby.process.returncode is not None:
                return  # killed itself before it could take over: no measurement
            await asyncio.sleep(0.005)

    async def stop(self) -> list[int]:
        for p in self.replicas:
            await _started(p)  # SIGTERM during Python's start-up would kill it outright
            p.signal(15)
        return [await p.wait(15) for p in self.replicas]


async def _started(process: WorkerProcess) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _up(process):
        await asyncio.sleep(0.02)


def _up(process: WorkerProcess) -> bool:
    """Alive, and past start-up: standing by or leading."""
    if process.process is None or process.process.returncode is not None:
        return False
    out = process.output()
    return "outbox.standby" in out or "outbox.leading" in out
