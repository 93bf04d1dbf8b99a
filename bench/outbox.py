"""`python -m bench.outbox [--rows N] [--batch-size N]`: how fast the outbox relay drains.

Needs PostgreSQL (SYNCWORKER_TEST_POSTGRES_DSN, default postgres@127.0.0.1:5432; a database
of its own is created and dropped) and starts a redis-server of its own. Printed:

1. Drain rate: `--rows` committed rows (transactions of 10) relayed by one in-process relay,
   against a raw loop doing the same work (`SELECT ... ORDER BY id LIMIT batch FOR UPDATE
   SKIP LOCKED`, the batch's XADDs in one pipeline, one DELETE, one transaction per batch);
   `--runs` interleaved runs of each (default 3), their medians and the ratio relay / raw.
2. Wake-up latency: commit of one row to its entry in the stream, with the relay idle
   (NOTIFY at commit; the 1 s poll would be the fallback), median and max of 50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from redis.asyncio import Redis

from worker.outbox import TABLE, Relay, RelayOptions, add, migrate
from worker.redis_server import RedisServer

STREAM = "bench:outbox"
ADMIN_DSN = os.environ.get(
    "SYNCWORKER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def fill(dsn: str, rows: int) -> None:
    """`rows` committed rows in transactions of 10, over 100 keys."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        for start in range(0, rows, 10):
            with conn.transaction():
                for i in range(start, min(start + 10, rows)):
                    add(conn, STREAM, "t", {"i": i}, key=f"k{i % 100}", version=i)


async def drain(redis: Redis, dsn: str, rows: int, batch_size: int) -> float:
    """Rows per second of the relay emptying a table of `rows`."""
    fill(dsn, rows)
    relay = Relay(RelayOptions(dsn=dsn, batch_size=batch_size), redis)
    began = time.perf_counter()
    task = asyncio.create_task(relay.run())
    while relay.stats.published < rows:
        await asyncio.sleep(0.005)
    took = time.perf_counter() - began
    relay.stop()
    await task
    await redis.delete(STREAM)
    return rows / took


async def raw_drain(redis: Redis, dsn: str, rows: int, batch_size: int) -> float:
    """Rows per second of the raw loop emptying a table of `rows`."""
    import psycopg

    fill(dsn, rows)
    began = time.perf_counter()
    done = 0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        while done < rows:
            async with conn.transaction():
                cursor = await conn.execute(
                    f"SELECT id, stream, type, key, data::text, event_id, version FROM {TABLE} "
                    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (batch_size,),
                )
                batch = await cursor.fetchall()
                async with redis.pipeline(transaction=False) as pipe:
                    for _, stream, type_, key, data, event_id, version in batch:
                        fields = {"type": type_, "key": key, "data": data, "event_id": event_id}
                        fields["version"] = str(version)
                        pipe.xadd(stream, fields)  # type: ignore[arg-type]
                    await pipe.execute()
                await conn.execute(
                    f"DELETE FROM {TABLE} WHERE id = ANY(%s)", ([r[0] for r in batch],)
                )
            done += len(batch)
    took = time.perf_counter() - began
    await redis.delete(STREAM)
    return rows / took


async def compare(redis: Redis, dsn: str, rows: int, batch_size: int, runs: int) -> None:
    """Interleaved runs of the relay and the raw loop; prints each and the medians."""
    relay: list[float] = []
    raw: list[float] = []
    for n in range(runs):
        relay.append(await drain(redis, dsn, rows, batch_size))
        raw.append(await raw_drain(redis, dsn, rows, batch_size))
        print(f"run {n + 1}: relay {relay[-1]:,.0f} rows/s, raw loop {raw[-1]:,.0f} rows/s")
    a, b = statistics.median(relay), statistics.median(raw)
    print(
        f"drain: {rows} rows, batch {batch_size}, median of {runs}: relay {a:,.0f} rows/s, "
        f"raw loop {b:,.0f} rows/s, relay/raw {a / b:.2f}"
    )


async def latency(redis: Redis, dsn: str, samples: int) -> list[float]:
    import psycopg

    relay = Relay(RelayOptions(dsn=dsn), redis)
    task = asyncio.create_task(relay.run())
    while not relay.stats.leader:
        await asyncio.sleep(0.01)
    waits: list[float] = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        last = "$"
        for i in range(samples):
            await add(conn, "bench:latency", "t", i)
            await conn.commit()
            began = time.perf_counter()
            reply = await redis.xread({"bench:latency": last}, block=5000)
            waits.append(time.perf_counter() - began)
            last = reply[0][1][-1][0]
            await asyncio.sleep(0.02)
    relay.stop()
    await task
    return waits


async def main(rows: int, batch_size: int, runs: int) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"syncworker_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        server = RedisServer().start()
        try:
            dsn = make_conninfo(**{**conninfo_to_dict(ADMIN_DSN), "dbname": name})
            with psycopg.connect(dsn) as conn:
                migrate(conn)
            redis = Redis.from_url(server.url)
            await compare(redis, dsn, rows, batch_size, runs)
            waits = await latency(redis, dsn, 50)
            print(
                f"commit -> stream (NOTIFY): median {statistics.median(waits) * 1000:.1f} ms, "
                f"max {max(waits) * 1000:.1f} ms"
            )
            await redis.aclose()
        finally:
            server.cleanup()
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.batch_size, args.runs))
