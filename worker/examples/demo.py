"""`syncworker demo`: the order & payment scenario on a small fleet of real worker processes.

Redis: `SYNCWORKER_REDIS_URL` (default redis://localhost:6379/0) if it answers, else a
throwaway `redis-server` on a free port. PostgreSQL: `SYNCWORKER_POSTGRES_DSN` (default
postgresql://postgres@127.0.0.1:5432/postgres) if it answers, in a database created for the
run; otherwise the demo runs without the SQL sink and says why.

Three `python -m worker run --config <run dir>/worker.toml` processes consume the orders
stream while the events are published over a few seconds. A quarter of the way in, one is
killed (SIGKILL); half-way, another gets SIGTERM and a replacement starts. The report then
accounts for every published entry from what Redis and PostgreSQL hold, and times the
hand-overs.

Everything the run writes to Redis lives under `demo:<run id>:`. Without `--keep` it is
deleted at the end, with the run's database and directory; with `--keep` it stays, and the
report prints the commands to look at it and to remove it. A throwaway redis-server is then
left running (its pid is printed), since a stopped one would keep nothing.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.connection import mask_url
from worker.examples import checks, handover, keys, order_service, report
from worker.examples.fleet import SETTINGS, Fleet, worker_toml
from worker.examples.order_payment import History, Names, history, routes
from worker.logs import configure_logging
from worker.redis_server import INSTALL_HINT, RedisServer

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
GROUP: str = SETTINGS["group"]
PUBLISH_S = 4.0
"""Seconds over which the events are published: long enough to kill workers mid-stream."""

KEPT_SERVERS: list[RedisServer] = []
"""Throwaway servers that `--keep` left running, referenced so that nothing reaps them."""


async def publish(redis: Redis, stream: str, events: list[dict[str, str]]) -> None:
    """XADD the events in order, a pipeline of 500 at a time."""
    for start in range(0, len(events), 500):
        pipe = redis.pipeline(transaction=False)
        for fields in events[start : start + 500]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


@dataclass
class Target:
    """The Redis the demo runs on."""

    url: str
    note: str
    server: RedisServer | None = None
    """The throwaway server, if the demo started one."""


async def find_redis(stack: AsyncExitStack, keep: bool) -> Target:
    """The configured Redis if it answers, else a throwaway one (stopped at exit unless kept)."""
    url = os.environ.get("SYNCWORKER_REDIS_URL", DEFAULT_REDIS_URL)
    client = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        await client.ping()
        return Target(url, f"{mask_url(url)} (answered)")
    except (RedisError, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        raise SystemExit(
            f"syncworker demo: nothing answers at {mask_url(url)}, and {exc}"
        ) from None
    if keep:
        KEPT_SERVERS.append(server)
    else:
        stack.callback(server.cleanup)
    kept = f", pid {server.process.pid if server.process else '?'}, left running (--keep)"
    note = (
        f"a throwaway redis-server on port {server.port}{kept if keep else ''} "
        f"({mask_url(url)}: {reason})"
    )
    return Target(server.url, note, server)


@dataclass
class Database:
    """The PostgreSQL database of the run, or why there is none."""

    note: str
    dsn: str | None = None
    name: str | None = None
    psql: str | None = None
    """`psql '<conninfo>'` for it, without the password."""
    drop: str | None = None
    """The command that drops it (for --keep)."""


async def find_postgres(stack: AsyncExitStack, run: str, keep: bool) -> Database:
    """A database made for this run (dropped at exit unless kept), or why there is none."""
    without = "running without the SQL sink"
    try:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        return Database(f"psycopg is not installed (pip install 'syncworker[postgres]'): {without}")
    admin_dsn = os.environ.get("SYNCWORKER_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    params = conninfo_to_dict(admin_dsn)
    public = {k: v for k, v in params.items() if k != "password"}
    shown = make_conninfo("", **public)
    try:
        admin = await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Database(f"not reachable at {shown} ({reason}): {without}")
    database = f"syncworker_demo_{run}"
    try:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        await admin.close()
        return Database(f"cannot create a database at {shown} ({exc}): {without}")

    async def drop() -> None:
        try:
            if not keep:
                await admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(database)
                    )
                )
        finally:
            await admin.close()

    stack.push_async_callback(drop)
    params["dbname"] = public["dbname"] = database
    return Database(
        f"{shown} (answered; database {database} made for this run)",
        dsn=make_conninfo("", **params),
        name=database,
        psql="psql " + shlex.quote(make_conninfo("", **public)),
        drop=f"psql {shlex.quote(shown)} -c 'DROP DATABASE {database}'",
    )


async def delete_run_keys(redis: Redis, run: str) -> None:
    """Delete everything this run created in Redis (all of it lives under demo:<run>:)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"demo:{run}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await redis.delete(*batch)
            batch = []
    if batch:
        await redis.delete(*batch)


async def timeline(
    redis: Redis,
    names: Names,
    scenario: History,
    fleet: Fleet,
    out: TextIO,
    seconds: float,
    service: order_service.OrderService | None = None,
) -> tuple[list[str], list[handover.HandOver]]:
    """Run the fleet through the scenario; the published ids and the two hand-overs. With
    an order service (PostgreSQL), its outbox phase follows while the workers still run."""
    first = [await fleet.start(f"worker-{n}") for n in (1, 2, 3)]
    await handover.wait_started(first)
    launching = None
    if service is not None and fleet.env.get("SYNCWORKER_POSTGRES_DSN"):
        # The relays start while the events are published: their start-up costs no wait.
        dsn, directory = fleet.env["SYNCWORKER_POSTGRES_DSN"], fleet.config.parent
        launching = asyncio.create_task(order_service.launch(service, dsn, directory, fleet.env))
    clock = handover.Clock(out)
    clock.say(f"publishing; {', '.join(w.name for w in first)} are consuming")
    signals = handover.Signaller(redis, names.orders, GROUP, fleet, clock)
    ids: list[str] = []
    milestones = [(0.25, signals.kill), (0.5, signals.terminate)]
    await handover.publish_paced(redis, names.orders, scenario.published, seconds, ids, milestones)
    clock.say(f"all {len(ids)} events published")
    await handover.until_settled(redis, names.orders, GROUP, ids[-1])
    reports = await signals.hand_overs()
    clock.say(f"every entry settled: nothing pending in group {GROUP}")
    if service is not None and launching is not None:
        await producer_side(redis, names, scenario, fleet, clock, service, launching)
    codes = await fleet.stop_all()
    rest = zip(fleet.workers, codes, strict=True)
    stopped = [f"{w.name} (exit {code})" for w, code in rest if not w.signalled]
    clock.say(f"SIGTERM to the rest: {', '.join(stopped)}")
    for h in reports:
        handover.taken_over(fleet, h)
    return ids, reports


async def producer_side(
    redis: Redis,
    names: Names,
    scenario: History,
    fleet: Fleet,
    clock: handover.Clock,
    service: order_service.OrderService,
    launching: asyncio.Task[None],
) -> None:
    """The order service commits through the outbox, a relay is killed between commit and
    publish; then wait until the workers settled its events too."""
    dsn = fleet.env["SYNCWORKER_POSTGRES_DSN"]
    try:
        await launching
        await order_service.run(service, dsn, names, clock.say)
    finally:
        await order_service.stop_relays(service)
    scenario.through_outbox = service.steps
    scenario.truth.update(service.truth())
    last: Any = await redis.xrevrange(names.orders, count=1)
    await handover.until_settled(redis, names.orders, GROUP, last[0][0].decode())
    clock.say("the workers settled the order service's events too")


@dataclass
class Setup:
    """Where the run happens."""

    target: Target
    db: Database
    fleet: Fleet
    redis: Redis


async def prepare(
    stack: AsyncExitStack, run_id: str, names: Names, postgres: bool, keep: bool
) -> Setup:
    """Find Redis and PostgreSQL, write the run's worker.toml; clean-ups go on `stack`."""
    directory = Path(tempfile.mkdtemp(prefix=f"syncworker-demo-{run_id}-"))
    if not keep:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
    target = await find_redis(stack, keep)
    if postgres:
        db = await find_postgres(stack, run_id, keep)
    else:
        db = Database("skipped (--no-postgres): running without the SQL sink")
    toml = worker_toml(SETTINGS, routes(names, sql=db.dsn is not None))
    fleet = Fleet.create(directory, toml, target.url, db.dsn)
    redis = Redis.from_url(target.url)
    stack.push_async_callback(redis.aclose)
    if not keep:
        stack.push_async_callback(delete_run_keys, redis, run_id)
    stack.push_async_callback(fleet.stop_all)
    return Setup(target, db, fleet, redis)


async def run(
    orders: int,
    seed: int,
    postgres: bool,
    out: TextIO,
    *,
    keep: bool = False,
    seconds: float = PUBLISH_S,
) -> int:
    """The whole demo; returns the exit code: 0 when nothing was lost or applied twice, every
    hand-over finished and every copy matches the truth."""
    run_id = uuid.uuid4().hex[:8]
    names = Names.isolated(run_id)
    scenario: History = history(orders, seed)
    async with AsyncExitStack() as stack:
        setup = await prepare(stack, run_id, names, postgres, keep)
        redis, db = setup.redis, setup.db
        report.header(
            out,
            setup.target.note,
            db.note,
            f"python -m worker run --config {setup.fleet.config}  (group {GROUP}, claim_idle "
            f"{SETTINGS['claim_idle']:g} s, claim_interval {SETTINGS['claim_interval']:g} s)",
        )
        report.published(out, scenario, orders, names.orders)
        service = None
        if db.dsn is not None:
            service = order_service.OrderService(orders + 1, max(10, orders // 10), seed)
            stack.push_async_callback(order_service.stop_relays, service)
        ids, reports = await timeline(redis, names, scenario, setup.fleet, out, seconds, service)
        handed = report.hand_overs(out, reports, SETTINGS["claim_idle"])
        books = await checks.account(redis, names, GROUP, ids, scenario, db.dsn)
        counted = report.accounting(out, books)
        if service is not None and db.dsn is not None:
            served = await order_service.account(service, redis, names, db.dsn)
            counted = report.order_service(out, served) and counted
        matched = await report.copies(out, redis, names, scenario, db.dsn)
        await show_keys(out, setup, names, keep)
        ok = handed and counted and matched
        out.write(
            "Result: nothing lost, nothing applied twice, every copy matches the truth.\n"
            if ok
            else "Result: FAILED (see above).\n"
        )
        return 0 if ok else 1
    return 1  # unreachable; keeps mypy aware of the exit stack's exception handling


async def show_keys(out: TextIO, setup: Setup, names: Names, keep: bool) -> None:
    """Name the run's keys; with --keep, how to look at them and remove them."""
    target, db, redis = setup.target, setup.db, setup.redis
    rows = await keys.run_keys(redis, names, GROUP)
    keys.print_keys(out, rows, mask_url(target.url), db.name)
    if not keep:
        database = f" the database {db.name} and" if db.name else ""
        out.write(
            f"Deleted at exit, with{database} the run directory (worker.toml, the workers' "
            "logs); `syncworker demo --keep` keeps them to look at.\n\n"
        )
        return
    server = target.server
    kept = keys.Kept(
        directory=str(setup.fleet.config.parent),
        psql=db.psql,
        drop_database=db.drop,
        server_pid=server.process.pid if server and server.process else None,
        server_dir=str(server.dir) if server else None,
    )
    example = await keys.example_key(redis, names.read_model + "*")
    keys.print_kept(out, keys.redis_cli(target.url), names, GROUP, example, kept)


def main(orders: int, seed: int, postgres: bool, keep: bool = False) -> int:
    """Entry point of `syncworker demo`."""
    configure_logging("ERROR", "console")
    try:
        return asyncio.run(run(orders, seed, postgres, sys.stdout, keep=keep))
    except RuntimeError as exc:
        if "redis-server" in str(exc):
            print(INSTALL_HINT, file=sys.stderr)
            return 1
        raise
