"""The keys a demo run used, under their real names, and the commands to look at them.

A newcomer who reads "orders" and types `XINFO GROUPS orders` finds nothing: the demo writes
under `demo:<run>:` so that it never touches anything it did not create. So the report names
each key as it is in Redis, and with `--keep` prints redis-cli and psql commands that work.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis

from worker.examples.order_payment import Names


@dataclass(frozen=True)
class Kept:
    """What `--keep` leaves behind besides the keys, and how to remove it."""

    directory: str
    """worker.toml and the workers' logs."""
    psql: str | None = None
    """`psql '<dsn>'` of the run's database, without password; None without PostgreSQL."""
    drop_database: str | None = None
    server_pid: int | None = None
    """pid of the throwaway redis-server left running; None if the demo did not start one."""
    server_dir: str | None = None


def redis_cli(url: str) -> str:
    """The redis-cli invocation that reaches `url` (never with the password: --askpass)."""
    parts = urlsplit(url)
    words = ["redis-cli"]
    if parts.scheme == "unix":
        words += ["-s", parts.path]
    else:
        if parts.hostname not in (None, "localhost", "127.0.0.1"):
            words += ["-h", parts.hostname]
        if parts.port not in (None, 6379):
            words += ["-p", str(parts.port)]
        if parts.scheme == "rediss":
            words.append("--tls")
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    if db not in ("", "0"):
        words += ["-n", db]
    if parts.username:
        words += ["--user", unquote(parts.username)]
    if parts.password:
        words.append("--askpass")
    return shlex.join(words)


async def run_keys(redis: Redis, names: Names, group: str) -> list[tuple[str, str]]:
    """(key or pattern, what it holds) for each key of the run that exists now."""
    base = names.orders.removesuffix("orders")
    relay_markers = f"{names.state}:relay:event:{group}:{names.orders}:*"
    candidates = [
        (names.orders, f"stream: the order service's events, consumer group {group}"),
        (names.orders + ":dlq", "stream: dead letters, with why (dlq_* fields)"),
        (names.requests, "stream: payment.requested, written by the relay"),
        (names.read_model + "*", "hashes: the read model, one per order"),
        (names.state + ":projection:versions", "hash: newest version applied, per order"),
        (names.state + ":projection:counts", "hash: projection outcomes"),
        (f"{names.state}:relay:counts:{names.orders}", "hash: relay outcomes"),
        (relay_markers, "strings: the relay's marker per forwarded event (1 day TTL)"),
    ]
    found = []
    for key, what in candidates:
        if key.endswith("*"):
            n = await _count(redis, key)
            if n:
                found.append((key, f"{what} ({n} keys)"))
        elif await redis.exists(key):
            found.append((key, what))
    total = await _count(redis, base + "*")
    found.append((base + "*", f"all of the above: {total} keys"))
    return found


async def example_key(redis: Redis, pattern: str) -> str | None:
    """One existing key matching `pattern`, the smallest name of the first scan pages."""
    keys = [k async for k in redis.scan_iter(match=pattern, count=1000)]
    return min((_text(k) for k in keys), default=None)


async def _count(redis: Redis, pattern: str) -> int:
    return sum([1 async for _ in redis.scan_iter(match=pattern, count=1000)])


def print_keys(
    out: TextIO, rows: list[tuple[str, str]], url_shown: str, database: str | None
) -> None:
    out.write(f"Keys of this run, in the Redis at {url_shown}\n")
    width = max(len(key) for key, _ in rows)
    for key, what in rows:
        out.write(f"  {key:<{width}}  {what}\n")
    if database is not None:
        out.write(
            f"PostgreSQL database {database}: tables payments, syncworker_inbox "
            "(the workers'), orders, syncworker_outbox (the order service's)\n"
        )
    out.write("\n")


def print_kept(
    out: TextIO,
    cli: str,
    names: Names,
    group: str,
    example: str | None,
    kept: Kept,
) -> None:
    """How to look at what `--keep` kept, and how to remove it."""
    base = names.orders.removesuffix("orders")
    out.write("Kept (--keep). Look at them:\n")
    commands = [
        f"{cli} XINFO GROUPS {names.orders}",
        f"{cli} XINFO CONSUMERS {names.orders} {group}",
        f"{cli} XRANGE {names.orders}:dlq - +",
        f"{cli} XREVRANGE {names.requests} + - COUNT 3",
        f"{cli} HGETALL {names.state}:projection:counts",
    ]
    if example is not None:
        commands.insert(3, f"{cli} HGETALL {example}")
    if kept.psql is not None:
        commands.append(f"{kept.psql} -c 'SELECT * FROM payments ORDER BY order_id LIMIT 5'")
    commands.append(f"ls {kept.directory}   # worker.toml and each worker's JSON log")
    for command in commands:
        out.write(f"  {command}\n")
    out.write("Remove them:\n")
    if kept.server_pid is not None:
        out.write(
            f"  kill {kept.server_pid}   # the throwaway redis-server, still running with them\n"
            f"  rm -r {kept.server_dir}\n"
        )
    else:
        out.write(f"  {cli} --scan --pattern '{base}*' | xargs {cli} DEL\n")
    if kept.drop_database is not None:
        out.write(f"  {kept.drop_database}\n")
    out.write(f"  rm -r {kept.directory}\n\n")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
