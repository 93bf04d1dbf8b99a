"""`syncworker trim`: remove the entries every group has read and acknowledged, nothing else."""

from __future__ import annotations

import argparse

from redis.asyncio import Redis

from worker.admin.trim import NoGroups, NoStream, safe_trim
from worker.commands.common import add_config_option, settings_from
from worker.commands.support import EXIT_FAILED, CommandError, execute

DESCRIPTION = """Remove the entries of STREAM that EVERY consumer group on it has both read and
acknowledged: XTRIM MINID below the oldest pending or undelivered entry of every group,
computed and applied in one atomic step on the server.

Why not MAXLEN? `XTRIM MAXLEN N` (or XADD MAXLEN) keeps the newest N entries whatever the
groups have done with the rest. When a group falls behind (a slow or stopped fleet, a backlog
after an outage), it deletes entries that group has not read yet, and entries it has read but
not yet acknowledged, whose retries then find nothing: those messages are lost without a
trace. MINID trimming below every group's oldest unfinished entry cannot remove an entry any
group still needs; a group that is behind only makes it keep more."""

EXAMPLE = """examples:
  syncworker trim orders --dry-run
  syncworker trim orders
  syncworker trim orders --approximate   # cheaper on very long streams
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "trim",
        help="safely trim a stream: only entries every group has acknowledged",
        description=DESCRIPTION,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.add_argument("stream", metavar="STREAM", help="stream to trim")
    parser.add_argument(
        "--approximate",
        action="store_true",
        help="remove whole radix-tree nodes only (XTRIM MINID ~): cheaper, may keep a few more",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the bound, remove nothing")
    parser.set_defaults(func=trim)


def trim(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def body(redis: Redis) -> int:
        try:
            result = await safe_trim(
                redis, args.stream, approximate=args.approximate, dry_run=args.dry_run
            )
        except NoStream:
            raise CommandError(f"no such stream: {args.stream}", EXIT_FAILED) from None
        except NoGroups:
            raise CommandError(
                f"{args.stream} has no consumer group; nothing says which entries are done "
                "with, so nothing was removed",
                EXIT_FAILED,
            ) from None
        for group, keep in sorted(result.groups.items()):
            print(f"group {group}: still needs entries from {keep}")
        if args.dry_run:
            print(f"dry run: entries of {args.stream} older than {result.bound} would be removed")
        else:
            print(f"removed {result.removed} entries of {args.stream} older than {result.bound}")
        return 0

    return execute(settings, body)
