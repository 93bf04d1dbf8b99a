"""Sink contenders, each in its own subprocess: `python -m bench.sink_contenders KIND [options]`.

The same two-line protocol as `bench.contender` (`ready`, then `go` on stdin, then consume
until SIGTERM). KIND is `worker` (a real Worker running one of the built-in sinks) or one of
the raw loops the sinks are measured against, each as simple as it can be while still
acknowledging only after the effect:

- `raw-projection`: XREADGROUP COUNT 500; per entry one EVALSHA of a versioned HSET script,
  all pipelined in one round trip; then one XACK.
- `raw-relay`: XREADGROUP COUNT 500; one XADD per entry to the target, pipelined; one XACK.
- `raw-sql`: XREADGROUP COUNT 500; one transaction with `executemany` of a version-guarded
  upsert; one XACK after the commit.
- `raw-sql-unnest`: the same with one `INSERT ... SELECT FROM unnest(...)` statement per
  batch (the newest version of each key in the batch only: one statement cannot update a
  row twice).

On SIGTERM the contender writes `{"requests": n}` to `--stats`: how many times it wrote a
command or a pipeline to Redis (its Redis round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

READ_COUNT = 500

VERSIONED_HSET = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

UPSERT = (
    "INSERT INTO {table} (id, order_id, customer_id, amount_cents, currency, status, items,"
    " version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
    " order_id = EXCLUDED.order_id, customer_id = EXCLUDED.customer_id,"
    " amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency,"
    " status = EXCLUDED.status, items = EXCLUDED.items, version = EXCLUDED.version"
    " WHERE {table}.version < EXCLUDED.version"
)
UNNEST = (
    "INSERT INTO {table} (id, order_id, customer_id, amount_cents, currency, status, items,"
    " version) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[],"
    " %s::text[], %s::text[], %s::integer[], %s::bigint[]) ON CONFLICT (id) DO UPDATE SET"
    " order_id = EXCLUDED.order_id, customer_id = EXCLUDED.customer_id,"
    " amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency,"
    " status = EXCLUDED.status, items = EXCLUDED.items, version = EXCLUDED.version"
    " WHERE {table}.version < EXCLUDED.version"
)
COLUMNS = ("order_id", "customer_id", "amount_cents", "currency", "status", "items")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, order_id text,"
    " customer_id text, amount_cents bigint, currency text, status text, items integer,"
    " version bigint)"
)

requests = 0


def count_requests() -> None:
    """Count every write of a command or pipeline to Redis: the round trips."""
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    async def counted(self: Any, command: Any, check_health: bool = True) -> None:
        global requests
        requests += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


async def _batches(args: argparse.Namespace, redis: Redis, stop: asyncio.Event) -> Any:
    streams: Any = {args.stream: ">"}
    while not stop.is_set():
        reply: Any = await redis.xreadgroup(
            args.group, args.consumer, streams, count=READ_COUNT, block=100
        )
        for _stream, entries in reply or ():
            yield entries


async def raw_projection(args: argparse.Namespace, stop: asyncio.Event) -> None:
    redis = Redis.from_url(args.url)
    sha = await redis.script_load(VERSIONED_HSET)
    versions = f"{args.prefix}:versions"
    async for entries in _batches(args, redis, stop):
        pipe = redis.pipeline(transaction=False)
        for _entry_id, fields in entries:
            data = json.loads(fields[b"data"])
            key = fields[b"key"].decode()
            flat = [item for pair in data.items() for item in pair]
            pipe.evalsha(sha, 2, f"{args.prefix}:{key}", versions, key, fields[b"version"], *flat)
        await pipe.execute()
        await redis.xack(args.stream, args.group, *[entry_id for entry_id, _ in entries])
    await redis.aclose()


async def raw_relay(args: argparse.Namespace, stop: asyncio.Event) -> None:
    redis = Redis.from_url(args.url)
    target = f"{args.prefix}:out"
    async for entries in _batches(args, redis, stop):
        pipe = redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            json.loads(fields[b"data"])  # the relay reads `data` to filter fields
            pipe.xadd(target, {**fields, b"source_id": entry_id})
        await pipe.execute()
        await redis.xack(args.stream, args.group, *[entry_id for entry_id, _ in entries])
    await redis.aclose()


async def raw_sql(args: argparse.Namespace, stop: asyncio.Event) -> None:
    import psycopg

    redis = Redis.from_url(args.url)
    table = f"t_{args.prefix.replace(':', '_')}"
    conn = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    await conn.execute(SCHEMA.format(table=table))
    upsert = (UNNEST if args.kind == "raw-sql-unnest" else UPSERT).format(table=table)
    async for entries in _batches(args, redis, stop):
        rows = []
        for _entry_id, fields in entries:
            data = json.loads(fields[b"data"])
            rows.append(
                [fields[b"key"].decode(), *(data.get(c) for c in COLUMNS), int(fields[b"version"])]
            )
        async with conn.transaction():
            if args.kind == "raw-sql-unnest":
                newest = {row[0]: row for row in sorted(rows, key=lambda r: r[-1])}
                await conn.execute(upsert, [list(c) for c in zip(*newest.values(), strict=True)])
            else:
                async with conn.cursor() as cur:
                    await cur.executemany(upsert, rows)
        await redis.xack(args.stream, args.group, *[entry_id for entry_id, _ in entries])
    await conn.close()
    await redis.aclose()


def sink(args: argparse.Namespace) -> Any:
    """The built-in sink under test, writing under `--prefix`."""
    if args.sink == "projection":
        from handlers.projection import Projection

        return Projection(prefix=f"{args.prefix}:", events={"order.paid": "set"})
    if args.sink == "relay":
        from handlers.relay import Relay

        return Relay(to=f"{args.prefix}:out", state_prefix=f"{args.prefix}:relay")
    from handlers.sql import SqlSink

    table = f"t_{args.prefix.replace(':', '_')}"
    return SqlSink(
        dsn=args.dsn,
        table=table,
        columns=list(COLUMNS),
        schema=SCHEMA.format(table=table),
    )


async def worker(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """A real Worker (what `syncworker run` builds) with one built-in sink."""
    from worker import Worker, WorkerSettings
    from worker.logs import configure_logging

    configure_logging("ERROR", "json")
    settings = WorkerSettings(
        redis_url=args.url,
        group=args.group,
        consumer=args.consumer,
        metrics_port=0,
        log_level="ERROR",
    )
    handler = sink(args)
    if args.batch_max:
        handler.batch_max = args.batch_max
    running = Worker(settings, [handler.bind([args.stream])])
    task = asyncio.create_task(running.run())
    await stop.wait()
    running.stop()
    await task


KINDS = {
    "worker": worker,
    "raw-projection": raw_projection,
    "raw-relay": raw_relay,
    "raw-sql": raw_sql,
    "raw-sql-unnest": raw_sql,
}


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await KINDS[args.kind](args, stop)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink_contenders")
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", default="bench-1")
    parser.add_argument("--prefix", required=True, help="where this run writes")
    parser.add_argument("--sink", choices=("projection", "relay", "sql"), default="projection")
    parser.add_argument("--dsn", default="")
    parser.add_argument("--batch-max", type=int, default=0)
    parser.add_argument("--stats", default=None)
    args = parser.parse_args()
    import psycopg  # noqa: F401  # imported before `ready`, so that imports are never timed

    import worker  # noqa: F401

    if args.kind == "worker":
        from worker.gc_tuning import tune_gc
        from worker.settings import WorkerSettings

        tune_gc(WorkerSettings().gc_threshold)  # as `syncworker run` does; untimed
    count_requests()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    asyncio.run(_main(args))
    if args.stats:
        Path(args.stats).write_text(json.dumps({"requests": requests}))


if __name__ == "__main__":
    main()
