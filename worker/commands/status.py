"""`syncworker status`: does the fleet keep up? Length, lag, pending and dead letters per group."""

from __future__ import annotations

import argparse
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.admin.groups import ConsumerState, GroupState, read_group_states
from worker.admin.partitioned import totals
from worker.commands.common import add_config_option, settings_from
from worker.commands.safe_text import decode, json_text, safe
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
        await refuse_if_denied(redis, streams)
        states = await read_group_states(
            redis,
            streams,
            group,
            settings.dead_letter_suffix,
            all_groups=args.all_groups,
        )
        for state in states:
            if state.exists:
                state.consumers = await consumers_of(redis, state.stream, state.group)
        if args.json:
            print_json(as_json(group, states))
        else:
            print(render(states))
        return 0

    return execute(settings, body)


async def refuse_if_denied(redis: Redis, streams: list[str]) -> None:
    """Raise Redis's refusal of XINFO GROUPS (NOPERM, say) instead of reporting no groups.

    `read_group_states` takes any error of XINFO GROUPS for a stream that does not exist yet,
    so a user without the permission would see "group does not exist" and exit 0. One
    pipelined round trip tells the two apart.
    """
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, ResponseError) and "no such key" not in str(reply):
            raise reply


async def consumers_of(redis: Redis, stream: str, group: str) -> list[ConsumerState] | None:
    """The consumers of a group, names decoded with `surrogateescape`: whatever bytes a name
    holds, status shows it (escaped) instead of failing. None when Redis refuses XINFO."""
    try:
        replies = await redis.xinfo_consumers(stream, group)
    except ResponseError as exc:
        if "NOPERM" in str(exc):
            raise  # a missing permission is the operator's to fix: say so, in one line
        return None
    return [
        ConsumerState(decode(c["name"]), int(c["pending"]), int(c["idle"]) / 1000.0)
        for c in replies
    ]


def as_json(group: str, states: list[GroupState]) -> dict[str, Any]:
    """Exact: a name that is not UTF-8 is {"base64": ...} (see `safe_text`)."""
    streams = []
    for state in states:
        row = state.as_dict()
        for name in ("stream", "group", "dead_letter_stream"):
            row[name] = json_text(row[name])
        for consumer in row["consumers"] or []:
            consumer["name"] = json_text(consumer["name"])
        streams.append(row)
    logical = [row.as_dict() for row in totals(states)]
    for row in logical:
        row["stream"], row["group"] = json_text(row["stream"]), json_text(row["group"])
    return {"group": json_text(group), "streams": streams, "logical_streams": logical}


def render(states: list[GroupState]) -> str:
    rows = [["STREAM", "GROUP", "LENGTH", "LAG", "PENDING", "OLDEST", "DLQ"]]
    details: list[str] = []
    for s in states:
        where = f"{safe(s.stream)} / {safe(s.group)}"
        if not s.exists:
            missing = ["-", "-", "-", str(s.dead_letter_length)]
            rows.append([safe(s.stream), safe(s.group), str(s.length), *missing])
            details.append(f"{where}: group does not exist (no worker started yet?)")
            continue
        lag = "?" if s.lag is None else ("~" if s.lag_estimated else "") + str(s.lag)
        rows.append(
            [
                safe(s.stream),
                safe(s.group),
                str(s.length),
                lag,
                str(s.pending),
                duration(s.oldest_pending_age_s),
                str(s.dead_letter_length),
            ]
        )
        for c in s.consumers or []:
            details.append(
                f"{where}: consumer {safe(c.name)}: {c.pending} pending, idle {duration(c.idle_s)}"
            )
        if not s.consumers:
            details.append(f"{where}: no consumers")
    for t in totals(states):
        lag = "?" if t.lag is None else str(t.lag)
        rows.append(
            [
                f"{safe(t.stream)} ({t.partitions} partitions)",
                safe(t.group),
                str(t.length),
                lag,
                str(t.pending),
                duration(t.oldest_pending_age_s),
                str(t.dead_letter_length),
            ]
        )
    return table(rows) + ("\n\n" + "\n".join(details) if details else "")
