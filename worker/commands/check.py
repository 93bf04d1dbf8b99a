"""`syncworker check`: validate the configuration and reach Redis, then exit 0 or 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from redis.exceptions import ResponseError

from worker import colocation, redis_url
from worker.commands.common import add_config_option, settings_from
from worker.commands.support import EXIT_FAILED, EXIT_USAGE, fail
from worker.connection import LOGIN_REFUSED, REDIS_DOWN, connect
from worker.middleware import worker_middleware
from worker.ops.redis_safety import EVICTION, NO_PERSISTENCE, SafetyReport, inspect
from worker.registry import handlers_from_settings
from worker.runtime.policy import RetryPolicy
from worker.settings import WorkerSettings

RISKS = {
    EVICTION: "maxmemory-policy may evict keys, and an evicted stream loses its messages "
    "(set maxmemory-policy noeviction)",
    NO_PERSISTENCE: "persistence is off, so a restart loses every stream and pending message "
    "(set appendonly yes)",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="validate settings and handlers, and ping Redis",
        description="Exit 0 when the settings are valid, every handler and middleware loads "
        "and Redis "
        "answers; otherwise print why and exit 1 (Redis refused the login or PING) or 2 "
        "(invalid settings, a handler that does not load, an unreachable Redis), like every "
        "other command. Warns (without failing) "
        "when the server may evict keys or keeps nothing on disk. Prints the topology; on a "
        "Redis Cluster, checks that every route's derived keys share its stream's slot "
        "(exit 1 if not) and notes handler targets in other slots.",
        epilog="example:\n  SYNCWORKER_HANDLERS=projection syncworker check --config worker.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    handlers = handlers_from_settings(settings)
    worker_middleware(settings, RetryPolicy.from_settings(settings))  # they load, or exit 2
    url = settings.masked_url

    async def ping() -> tuple[SafetyReport, str]:
        client = connect(settings)
        try:
            await client.ping()
            return await inspect(client), await describe(client, settings)
        finally:
            await client.aclose()

    try:
        report, topology = asyncio.run(ping())
    except LOGIN_REFUSED as exc:
        fail(f"Redis at {url} refused the login: {exc}")
        return EXIT_FAILED
    except REDIS_DOWN as exc:
        fail(f"cannot reach Redis at {url}: {exc}")
        return EXIT_USAGE
    except ResponseError as exc:  # e.g. NOPERM for PING
        fail(f"Redis at {url} refused the command: {exc}")
        return EXIT_FAILED
    for reason, unsafe in report.unsafe.items():
        if unsafe:
            print(f"warning: Redis at {url}: {RISKS[reason]}", file=sys.stderr)
    streams = sorted({s for h in handlers for s in h.streams})
    notes: list[str] = []
    if settings.cluster:
        findings = colocation.inspect(handlers, settings)
        for violation in findings.violations:
            fail(violation)
        if findings.violations:
            return EXIT_FAILED
        notes = findings.notes
    print(
        f"ok: {len(handlers)} handler(s) on {', '.join(streams)}; Redis at {url} answers "
        f"(topology: {topology})"
    )
    for note in notes:
        print(f"note: {note}")
    return 0


async def describe(client: Any, settings: WorkerSettings) -> str:
    """The topology in one line: standalone, a cluster's primaries, Sentinel's primary."""
    if settings.topology == redis_url.CLUSTER:
        primaries = client.get_primaries()
        shown = ", ".join(f"{n.host}:{n.port}" for n in primaries)
        return f"Redis Cluster, {len(primaries)} primaries ({shown})"
    if settings.topology == redis_url.SENTINEL:
        pool = client.connection_pool
        host, port = await pool.get_master_address()
        return f"Sentinel, service {pool.service_name}, primary at {host}:{port}"
    return "standalone"
