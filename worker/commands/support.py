"""What the operations commands share: running against Redis, errors, streams, ids, output.

Every command exits 0 on success, 1 when the operation itself failed (Redis refused the login
or a command, an id was not found), and 2 on bad arguments, bad settings or an unreachable
Redis, always with one line on stderr. `check` follows the same codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from worker.commands.safe_text import safe
from worker.connection import LOGIN_REFUSED, REDIS_DOWN, connect
from worker.errors import ConfigError
from worker.handler import expand_partitions
from worker.registry import load_plugin
from worker.settings import WorkerSettings

EXIT_FAILED = 1
EXIT_USAGE = 2

_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")


class CommandError(Exception):
    """A one-line error that ends the command with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str) -> None:
    """One line on stderr; escaped, since it may quote names or replies from Redis."""
    print(f"syncworker: error: {safe(message)}", file=sys.stderr)


def execute(settings: WorkerSettings, body: Callable[[Redis], Awaitable[int]]) -> int:
    """Run `body` with a Redis client; turn the expected failures into one line and a code."""
    url = settings.masked_url

    async def main() -> int:
        client = connect(settings)
        try:
            return await body(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except CommandError as exc:
        fail(str(exc))
        return exc.code
    except LOGIN_REFUSED as exc:
        fail(f"Redis at {url} refused the login: {exc}")
        return EXIT_FAILED
    except REDIS_DOWN as exc:
        fail(f"cannot reach Redis at {url}: {exc}")
        return EXIT_USAGE
    except NoPermissionError as exc:  # redis-py drops the code: put it back, it is the clue
        fail(f"Redis refused the command: NOPERM {exc}")
        return EXIT_FAILED
    except ResponseError as exc:
        fail(f"Redis refused the command: {exc}")
        return EXIT_FAILED


def add_stream_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream",
        "-s",
        dest="streams",
        action="append",
        metavar="STREAM",
        help="a stream to include (repeatable); default: every stream the configured "
        "handlers are routed to (SYNCWORKER_HANDLERS, [[routes]] in --config)",
    )


def add_group_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group", "-g", metavar="GROUP", help="consumer group (default: SYNCWORKER_GROUP)"
    )


def routed_streams(settings: WorkerSettings, explicit: list[str] | None) -> list[str]:
    """The streams named with --stream, else those of the configured routes and handlers
    (each partition of a partitioned one).

    Routes name their stream in the settings; handlers named in SYNCWORKER_HANDLERS are
    imported to learn theirs.

    Raises:
        ConfigError: no stream at all, or a handler cannot be loaded.
    """
    if explicit:
        return list(dict.fromkeys(explicit))
    streams: dict[str, None] = {}
    for route in settings.routes:
        for stream in expand_partitions([route.stream], route.partitions or 0):
            streams[stream] = None
    for reference in settings.handlers:
        plugin = load_plugin(reference, "SYNCWORKER_HANDLERS")
        for stream in getattr(plugin, "streams", ()):
            streams[stream] = None
    if not streams:
        raise ConfigError(
            "--stream", "no stream given, and no handlers or [[routes]] configured to find them"
        )
    return list(streams)


def group_of(settings: WorkerSettings, args: argparse.Namespace) -> str:
    group: str | None = getattr(args, "group", None)
    return group or settings.group


def entry_id(value: str) -> str:
    """argparse type of a stream entry id (`1700000000000-0`, or just the milliseconds)."""
    if not _ENTRY_ID.match(value):
        raise argparse.ArgumentTypeError(f"not a stream entry id: {value!r} (e.g. 1700000000000-0)")
    return value


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False))


def duration(seconds: float | None) -> str:
    """Compact human duration: 850ms, 4.2s, 3m10s, 5h02m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
