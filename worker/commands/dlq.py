"""`syncworker dlq`: inspect, replay and purge dead letters."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.admin import deadletters
from worker.admin.deadletters import DeadLetterEntry
from worker.commands.common import add_config_option, settings_from
from worker.commands.safe_text import json_key, json_text, safe, safe_lines
from worker.commands.support import (
    EXIT_FAILED,
    CommandError,
    entry_id,
    execute,
    print_json,
    table,
)
from worker.settings import WorkerSettings

EXAMPLE = """STREAM is the original stream; its dead letters live in STREAM plus
SYNCWORKER_DEAD_LETTER_SUFFIX (default ':dlq').

examples:
  syncworker dlq list orders --limit 20
  syncworker dlq show orders 1700000000000-0
  syncworker dlq replay orders --id 1700000000000-0 --dry-run
  syncworker dlq replay orders --all --group billing
  syncworker dlq purge orders --all --dry-run
  syncworker dlq purge orders --id 1700000000000-0
"""

REPLAY_HELP = """Replay writes each dead letter's ORIGINAL fields (exactly as they were, without
the dlq_* metadata) to the original stream as a new entry, followed by replay_of_stream and
replay_of_id naming the entry it copies, and removes the dead letter in the same atomic step, so
a crash never loses one and never leaves one in both places. The built-in handlers deduplicate
on replay_of_stream/replay_of_id, so a replay of an entry whose effect landed is a duplicate.
With --group G the new entry also carries replay_for_group=G (last): it is delivered to every
group as usual, but only G runs its handlers; every other group acks it at once without running
a handler (counted as skipped). Without --group, EVERY consumer group of the stream runs it
again, including groups that had processed it already: handlers should be idempotent
(event_id / version). A dead letter belongs to one group (dlq_group in `dlq show`), so --group
is usually what you want. With --all, only the dead letters that exist when the command starts
are replayed; one that fails again is not replayed twice.

example:
  syncworker dlq replay orders --all --group billing
"""

PROGRESS_EVERY_S = 1.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description="Work with the dead letters of a stream.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = _action(actions, "list", "list dead letters, oldest first", "dlq list orders --json")
    listing.add_argument("--limit", type=_positive, default=50, help="at most N (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing.set_defaults(func=list_command)

    show = _action(
        actions, "show", "show one dead letter in full", "dlq show orders 1700000000000-0"
    )
    show.add_argument("id", type=entry_id, metavar="ID", help="the dead letter's entry id")
    show.add_argument("--json", action="store_true", help="print JSON for scripts")
    show.set_defaults(func=show_command)

    replay = _action(actions, "replay", "write dead letters back to their stream", None)
    replay.description = REPLAY_HELP
    _add_selection(replay)
    replay.add_argument(
        "--group",
        "-g",
        metavar="GROUP",
        help="only this consumer group runs the replay; the others ack it untouched",
    )
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.set_defaults(func=replay_command)

    purge = _action(actions, "purge", "delete dead letters for good", "dlq purge orders --all")
    _add_selection(purge)
    purge.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    purge.set_defaults(func=purge_command)


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str | None,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example:\n  syncworker {example}" if example else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.add_argument("stream", metavar="STREAM", help="the original stream")
    return parser


def _add_selection(parser: argparse.ArgumentParser) -> None:
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "--id", dest="ids", action="append", type=entry_id, metavar="ID", help="repeatable"
    )
    chosen.add_argument("--all", action="store_true", help="every dead letter of the stream")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _dead_letter_stream(settings: WorkerSettings, stream: str) -> str:
    return settings.dead_letter_stream(stream)


# list / show ----------------------------------------------------------------------------


def list_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    dlq = _dead_letter_stream(settings, args.stream)

    async def body(redis: Redis) -> int:
        letters = await deadletters.read(redis, dlq, count=args.limit)
        total = await redis.xlen(dlq)
        if args.json:
            print_json(
                {
                    "dead_letter_stream": dlq,
                    "total": total,
                    "entries": [as_json(d) for d in letters],
                }
            )
            return 0
        if not letters:
            print(f"{safe(dlq)}: no dead letters")
            return 0
        rows = [["ID", "FAILED AT", "ORIGINAL ID", "TYPE", "KEY", "HANDLER", "ATTEMPTS", "ERROR"]]
        for d in letters:
            f = d.decoded_fields()
            error = f"{d.meta.get('error_type', '')}: {d.meta.get('error', '')}"
            cells = [
                d.id,
                d.meta.get("failed_at", ""),
                d.meta.get("id", ""),
                f.get("type", ""),
                f.get("key", ""),
                d.meta.get("handler", ""),
                d.meta.get("attempts", ""),
            ]
            rows.append([safe(cell) for cell in cells] + [safe(error)[:60]])
        print(table(rows))
        print(f"\n{len(letters)} of {total} dead letters in {safe(dlq)}")
        return 0

    return execute(settings, body)


def show_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    dlq = _dead_letter_stream(settings, args.stream)

    async def body(redis: Redis) -> int:
        found = await deadletters.read(redis, dlq, args.id, args.id, 1)
        if not found:
            raise CommandError(f"no dead letter {args.id} in {safe(dlq)}", EXIT_FAILED)
        letter = found[0]
        if args.json:
            print_json(as_json(letter))
        else:
            print(render(dlq, letter))
        return 0

    return execute(settings, body)


def render(dlq: str, letter: DeadLetterEntry) -> str:
    """One dead letter for a terminal: every value escaped (see `safe_text`)."""
    lines = [f"dead letter {letter.id} in {safe(dlq)}", "", "original fields:"]
    lines += [f"  {safe(k)}: {safe(v)}" for k, v in letter.pairs]
    lines += ["", "failure:"]
    lines += [f"  {safe(k)}: {_indented(k, v)}" for k, v in letter.meta.items()]
    return "\n".join(lines)


def _indented(name: str, value: str) -> str:
    """The traceback keeps its lines, indented under its name; every other value is one line."""
    if name != "traceback":
        return safe(value)
    return safe_lines(value.rstrip("\n")).replace("\n", "\n    ")


def as_json(letter: DeadLetterEntry) -> dict[str, Any]:
    """One dead letter for --json, exact: values that are not UTF-8 as {"base64": ...}.

    `pairs` is the exact entry (order and repeated names kept); `fields` is the same as an
    object, where a repeated name keeps its last value and a name that is not UTF-8 is written
    with `\\xff` escapes (object keys must be strings).
    """
    return {
        "id": letter.id,
        "fields": {json_key(k): json_text(v) for k, v in letter.pairs},
        "pairs": [[json_text(k), json_text(v)] for k, v in letter.pairs],
        "meta": {json_key(k): json_text(v) for k, v in letter.meta.items()},
    }


# replay / purge -------------------------------------------------------------------------


def replay_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    dlq = _dead_letter_stream(settings, args.stream)

    async def body(redis: Redis) -> int:
        if args.group is not None:
            await _check_group(redis, args.stream, args.group)
        if args.dry_run:
            return await _dry_run(redis, dlq, args, "replay")
        if args.all:
            return await _replay_all(redis, dlq, args.stream, args.group)
        results = await deadletters.replay(redis, dlq, args.stream, args.ids, args.group)
        missing = [i for i, new_id in zip(args.ids, results, strict=True) if new_id is None]
        for dead_id, new_id in zip(args.ids, results, strict=True):
            if new_id is not None:
                print(f"replayed {dead_id} -> {safe(args.stream)} {new_id}{_for(args.group)}")
        return _report_missing(missing, dlq)

    return execute(settings, body)


async def _check_group(redis: Redis, stream: str, group: str) -> None:
    """A replay for a group the stream does not have would be skipped by every group."""
    try:
        infos = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" not in str(exc):
            raise
        infos = []
    if group.encode() not in {info["name"] for info in infos}:
        raise CommandError(f"no consumer group {safe(group)} on {safe(stream)}", EXIT_FAILED)


async def _dry_run(redis: Redis, dlq: str, args: argparse.Namespace, action: str) -> int:
    """What `replay` or `purge` would do to the selected dead letters; changes nothing."""
    letters, missing = await _selected(redis, dlq, args)
    target = "" if action == "purge" else f" -> {safe(args.stream)}"
    group = _for(getattr(args, "group", None))
    for d in letters:
        f = d.decoded_fields()
        what = f"type={f.get('type', '')} key={f.get('key', '')}"
        print(f"would {action} {d.id}{target}{group} ({safe(what)})")
    done = "purged" if action == "purge" else f"replayed to {safe(args.stream)}{group}"
    print(f"dry run: {len(letters)} dead letter(s) would be {done}")
    return _report_missing(missing, dlq)


def _for(group: str | None) -> str:
    return "" if group is None else f" for group {safe(group)}"


async def _selected(
    redis: Redis, dlq: str, args: argparse.Namespace
) -> tuple[list[DeadLetterEntry], list[str]]:
    """The dead letters --all or --id select, and the ids not found."""
    if args.all:
        end = await deadletters.last_id(redis, dlq)
        letters = (
            [d async for page in deadletters.pages(redis, dlq, end) for d in page] if end else []
        )
        missing: list[str] = []
    else:
        letters, missing = [], []
        for dead_id in args.ids:
            found = await deadletters.read(redis, dlq, dead_id, dead_id, 1)
            letters += found
            if not found:
                missing.append(dead_id)
    return letters, missing


async def _replay_all(redis: Redis, dlq: str, stream: str, group: str | None) -> int:
    end = await deadletters.last_id(redis, dlq)
    if end is None:
        print(f"{safe(dlq)}: no dead letters")
        return 0
    total = await redis.xlen(dlq)
    done = 0
    progress = _progress(total)
    async for page in deadletters.pages(redis, dlq, end):
        results = await deadletters.replay(redis, dlq, stream, [d.id for d in page], group)
        done += sum(1 for r in results if r is not None)
        progress(done)
    print(f"replayed {done} dead letter(s) from {safe(dlq)} to {safe(stream)}{_for(group)}")
    return 0


def _progress(total: int) -> Callable[[int], None]:
    """Reports progress on stderr at most once a second, so long replays show they move."""
    last = time.monotonic()

    def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            print(f"replayed {done}/{total}", file=sys.stderr, flush=True)

    return report


def purge_command(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    dlq = _dead_letter_stream(settings, args.stream)

    async def body(redis: Redis) -> int:
        if args.dry_run:
            return await _dry_run(redis, dlq, args, "purge")
        if args.all:
            end = await deadletters.last_id(redis, dlq)
            removed = 0 if end is None else await deadletters.purge_through(redis, dlq, end)
            print(f"purged {removed} dead letter(s) from {safe(dlq)}")
            return 0
        existed = await deadletters.purge(redis, dlq, args.ids)
        print(f"purged {sum(existed)} dead letter(s) from {safe(dlq)}")
        return _report_missing([i for i, e in zip(args.ids, existed, strict=True) if not e], dlq)

    return execute(settings, body)


def _report_missing(missing: list[str], dlq: str) -> int:
    if missing:
        print(f"syncworker: error: not found in {safe(dlq)}: {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    return 0
