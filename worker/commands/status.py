"""`syncworker status`: does the fleet keep up? Length, lag, pending and dead letters per group."""

from __future__ import annotations

import argparse
from typing import Any

from redis.asyncio import Redis

from worker.admin.groups import GroupState, read_group_states
from worker.commands.common import add_config_option, settings_from
from worker.commands.support import (
    add_group_option,
    add_stream_option,
    duration,
    execute,
    group_of,
    print_json,
    routed_streams,
    table,
)

EXAMPLE = """columns:
  LENGTH   entries in the stream           LAG      entries not yet delivered to the group
                                           (~N: counted, as Redis reports none after a
                                           restart from AOF until the group catches up)
  PENDING  delivered, not yet acked        OLDEST   age of the oldest pending entry
  DLQ      entries in the dead-letter stream

examples:
  syncworker status --config worker.toml
  syncworker status --stream orders --json | jq '.streams[] | {stream, lag, pending}'
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status",
        help="show length, lag, pending entries, consumers and dead letters per stream",
        description="For each routed stream and the consumer group: stream length, lag, "
        "pending entries and the age of the oldest, every consumer with its idle time and "
        "pending count, and the length of the dead-letter stream.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    add_stream_option(parser)
    add_group_option(parser)
    parser.add_argument(
        "--all-groups", action="store_true", help="show every group on the streams, not just ours"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    streams = routed_streams(settings, args.streams)
    group = group_of(settings, args)

    async def body(redis: Redis) -> int:
        states = await read_group_states(
            redis,
            streams,
            group,
            settings.dead_letter_suffix,
            consumers=True,
            all_groups=args.all_groups,
        )
        if args.json:
            print_json(as_json(group, states))
        else:
            print(render(states))
        return 0

    return execute(settings, body)


def as_json(group: str, states: list[GroupState]) -> dict[str, Any]:
    return {"group": group, "streams": [state.as_dict() for state in states]}


def render(states: list[GroupState]) -> str:
    rows = [["STREAM", "GROUP", "LENGTH", "LAG", "PENDING", "OLDEST", "DLQ"]]
    details: list[str] = []
    for s in states:
        if not s.exists:
            rows.append(
                [s.stream, s.group, str(s.length), "-", "-", "-", str(s.dead_letter_length)]
            )
            details.append(f"{s.stream} / {s.group}: group does not exist (no worker started yet?)")
            continue
        lag = "?" if s.lag is None else ("~" if s.lag_estimated else "") + str(s.lag)
        rows.append(
            [
                s.stream,
                s.group,
                str(s.length),
                lag,
                str(s.pending),
                duration(s.oldest_pending_age_s),
                str(s.dead_letter_length),
            ]
        )
        for c in s.consumers or []:
            details.append(
                f"{s.stream} / {s.group}: consumer {c.name}: "
                f"{c.pending} pending, idle {duration(c.idle_s)}"
            )
        if not s.consumers:
            details.append(f"{s.stream} / {s.group}: no consumers")
    return table(rows) + ("\n\n" + "\n".join(details) if details else "")
