"""`syncworker consumers prune`: delete consumers that are gone and hold nothing."""

from __future__ import annotations

import argparse

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.admin.prune import prune
from worker.commands.common import add_config_option, settings_from
from worker.commands.support import (
    add_group_option,
    add_stream_option,
    duration,
    execute,
    group_of,
    routed_streams,
)

DEFAULT_IDLE_S = 3600.0

EXAMPLE = """Every process registers a consumer (hostname-pid by default), so restarts and
rescheduled pods leave consumers behind. This deletes those idle for --idle seconds or more
that hold NO pending entries and whose worker is not running. A running worker refreshes a
presence key (<stream>:presence:<group>:<consumer>, time to live claim_idle) every third of
claim_idle, so it is kept even when its idle time grew on a quiet stream (Redis 7.0 counts
idle time from the last read that returned entries). A consumer holding pending entries is
never deleted (its entries would be dropped with it); live workers take those entries over
after claim_idle. The check
and the delete are one atomic step on the server, so a consumer that receives entries at the
last moment is kept.

examples:
  syncworker consumers prune --idle 600 --dry-run
  syncworker consumers prune --stream orders --group billing
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "consumers",
        help="manage the consumers of the group (prune)",
        description="Manage the consumers of the consumer group.",
        epilog="example:\n  syncworker consumers prune --idle 600",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    pruning = actions.add_parser(
        "prune",
        help="delete idle consumers that hold no pending entries",
        description="Delete consumers idle for --idle seconds that hold no pending entries.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(pruning)
    add_stream_option(pruning)
    add_group_option(pruning)
    pruning.add_argument(
        "--idle",
        type=_seconds,
        default=DEFAULT_IDLE_S,
        metavar="SECONDS",
        help=f"minimum idle time (default {DEFAULT_IDLE_S:.0f})",
    )
    pruning.add_argument("--dry-run", action="store_true", help="only show what would go")
    pruning.set_defaults(func=prune_command)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return seconds


def prune_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    streams = routed_streams(settings, args.streams)
    group = group_of(settings, args)

    async def body(redis: Redis) -> int:
        deleted = candidates = 0
        for stream in streams:
            try:
                results = await prune(redis, stream, group, args.idle, dry_run=args.dry_run)
            except ResponseError as exc:  # no stream or no group: nothing to prune there
                print(f"{stream} / {group}: skipped ({exc})")
                continue
            for r in results:
                c = r.consumer
                where = f"{stream} / {group}: consumer {c.name} (idle {duration(c.idle_s)})"
                if r.outcome == "deleted":
                    deleted += 1
                    print(f"{where}: deleted")
                elif r.outcome == "candidate":
                    candidates += 1
                    print(f"{where}: would be deleted")
                elif r.outcome == "alive":
                    print(f"{where}: kept, its worker is running")
                elif r.outcome == "pending":
                    print(f"{where}: kept, holds {c.pending} pending entries")
                elif r.outcome == "active":
                    print(f"{where}: kept, active again")
        if args.dry_run:
            print(f"dry run: {candidates} consumer(s) would be deleted")
        else:
            print(f"deleted {deleted} consumer(s)")
        return 0

    return execute(settings, body)
