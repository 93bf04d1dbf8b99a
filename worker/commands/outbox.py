"""`syncworker outbox`: create the outbox table (`migrate`) and relay it to Redis (`run`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

import structlog

from worker.commands.common import add_config_option, settings_from
from worker.connection import connect
from worker.errors import ConfigError
from worker.logs import configure_logging, secret_values
from worker.loop import run_in_loop
from worker.outbox.ops import RelayOpsServer
from worker.outbox.relay import Relay, RelayOptions
from worker.outbox.schema import TABLE
from worker.runtime.supervise import bounded, wait_ended
from worker.settings import WorkerSettings

DSN_ENV = "SYNCWORKER_POSTGRES_DSN"

SHUTDOWN_S = 10.0
"""Seconds a stopping relay gives its current batch (or wait) before it is cancelled."""

log = structlog.get_logger("worker.outbox")

EXAMPLE = """examples:
  syncworker outbox migrate --dsn postgresql://app@db/orders
  SYNCWORKER_POSTGRES_DSN=postgresql://app@db/orders SYNCWORKER_REDIS_URL=redis://redis:6379/0 \\
    syncworker outbox run

Run two or more relays: one leads (a PostgreSQL advisory lock), the others take over
within about --lock-interval seconds of its death.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "outbox",
        help="the transactional outbox: create its table, relay it to Redis",
        description="The producer side: rows written to the outbox table in the producer's "
        "own transaction are relayed to their Redis streams once committed.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    migrate = sub.add_parser("migrate", help="create the outbox table and trigger (idempotent)")
    _add_database_options(migrate)
    migrate.set_defaults(func=run_migrate)
    relay = sub.add_parser(
        "run",
        help="relay committed rows to their streams until SIGTERM",
        description="Relay committed outbox rows to their Redis streams, in id order, at "
        "least once. Redis settings come from SYNCWORKER_* / --config as for `run`.",
    )
    add_config_option(relay)
    _add_database_options(relay)
    relay.add_argument("--batch-size", type=int, default=500, metavar="N", help="default: 500")
    relay.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between polls when no NOTIFY wakes the relay (default: 1)",
    )
    relay.add_argument(
        "--lock-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between a standby's attempts to take over the lead (default: 1)",
    )
    relay.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="port of /metrics and /healthz (default: SYNCWORKER_METRICS_PORT; 0: none)",
    )
    relay.set_defaults(func=run_relay)


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV),
        metavar="DSN",
        help=f"PostgreSQL connection string or URL (default: ${DSN_ENV})",
    )
    parser.add_argument("--table", default=TABLE, metavar="NAME", help=f"default: {TABLE}")


def _dsn(args: argparse.Namespace) -> str:
    if not args.dsn:
        raise ConfigError("--dsn", f"no --dsn given and {DSN_ENV} is not set")
    return str(args.dsn)


def _password(dsn: str) -> list[str]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:
        return []
    return [str(password)] if password else []


def run_migrate(args: argparse.Namespace) -> int:
    import psycopg

    from worker.outbox.schema import check_table, migrate

    dsn = _dsn(args)
    try:
        check_table(args.table)
    except ValueError as exc:
        raise ConfigError("--table", str(exc)) from None
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            migrate(conn, args.table)
    except psycopg.Error as exc:
        print(f"syncworker: error: migration failed: {_redact(str(exc), dsn)}", file=sys.stderr)
        return 1
    print(f"outbox table {args.table} is ready")
    return 0


def _redact(text: str, dsn: str) -> str:
    for secret in _password(dsn):
        text = text.replace(secret, "***")
    return text


def run_relay(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    dsn = _dsn(args)
    configure_logging(
        settings.log_level,
        settings.log_format,
        secrets=[*secret_values(settings), *_password(dsn)],
    )
    try:
        options = RelayOptions(
            dsn=dsn,
            table=args.table,
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            lock_interval=args.lock_interval,
            stats_interval=settings.stats_interval,
        )
    except ValueError as exc:
        raise ConfigError("outbox run", str(exc)) from None
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    return run_in_loop(_serve(options, settings, settings.metrics_host, port), settings.event_loop)


async def _serve(options: RelayOptions, settings: WorkerSettings, host: str, port: int) -> int:
    redis = connect(settings)
    relay = Relay(options, redis)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    ops = RelayOpsServer(relay.stats, options.table, host, port) if port else None
    try:
        if ops is not None:
            await ops.start()
        log.info("outbox.started", table=options.table, batch_size=options.batch_size)
        code = await _relay_until_stopped(relay)
    finally:
        with contextlib.suppress(TimeoutError):  # logged as shutdown.stuck
            if ops is not None:
                await bounded(ops.stop(), 2.0, "outbox ops server")
            await bounded(redis.aclose(), 2.0, "outbox redis client")
    log.info("outbox.stopped", code=code)
    return code


async def _relay_until_stopped(relay: Relay) -> int:
    """Run the relay until a signal; then give its current step SHUTDOWN_S to end.

    A relay cut off mid-batch loses nothing: rows it published but did not delete go out
    again from the next leader, with the same event ids.
    """
    task = asyncio.create_task(relay.run(), name="outbox relay")
    stop = asyncio.create_task(relay.stopping.wait(), name="outbox stop")
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not await wait_ended([task], SHUTDOWN_S, "outbox relay"):
        task.cancel()
        await wait_ended([task], 1.0, "outbox relay")
        return 1
    if task.cancelled() or task.exception() is None:
        return 0
    log.error("outbox.crashed", exc_info=task.exception())
    return 1
