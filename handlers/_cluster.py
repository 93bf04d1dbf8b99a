"""The built-in handlers on a Redis Cluster: each effect atomic in its own slot, the ack after.

On one server a handler's script writes the effect, its dedupe marker, its counters and the
XACK of the source entry in one step. On a cluster a script may only touch keys of one slot,
and a handler's targets (an entity hash, a relay's target stream, the keys an `Effects`
records) usually live in other slots than the source stream. So there:

- every effect runs in the slot of its target, with its marker, version and counters kept
  beside it (`worker.keys.colocated`: `{<target>}<name>`), in the same script as before:
  the effect and its marker still land together or not at all;
- the XACK stays inside that script when the source stream shares the slot (nothing
  changes: fully atomic); otherwise it follows as its own command once every effect is in.
  A crash between the two leaves the entry pending; its retry finds the markers, writes
  nothing again, and acks. Effects stay exactly once; only the ack moved.

A relay to several targets runs one such step per target, each with its own marker, so a
crash between two targets is finished by the retry without a second entry in either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from worker.keys import colocated, key_slot, same_slot
from worker.wide import fits

if TYPE_CHECKING:
    from handlers.relay import Relay, Target


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def project(redis: Redis, script: Any, keys: Sequence[str], args: list[Any]) -> Any:
    """The projection's PROJECT script with its keys beside the entity hash.

    Args:
        keys: entity hash, versions hash, counts hash, source stream, dedupe marker.
        args: as PROJECT takes them (ARGV[4] group, ARGV[5] entry id, ARGV[6] ack flag).
    """
    entity, versions, counts, stream, marker = keys
    ack = args[5] == "1"
    inside = ack and same_slot(entity, stream)
    placed = [
        entity,
        colocated(entity, versions),
        colocated(entity, counts),
        stream if inside else entity,  # not used by the script without the ack
        colocated(entity, marker),
    ]
    outcome = await script(keys=placed, args=[*args[:5], "1" if inside else "0", *args[6:]])
    if ack and not inside:
        await redis.xack(stream, args[3], args[4])
    return outcome


async def relay(
    handler: Relay,
    targets: Sequence[Target],
    entries: Sequence[list[bytes | str]],
    keys: Sequence[str],
    args: list[Any],
) -> str:
    """The relay's step once per target, its marker and counters in the target's slot.

    Args:
        keys: dedupe marker, source stream, counts hash, then the target streams.
        args: group, entry id, ack flag, marker TTL, MAXLEN (RELAY's first five).
    """
    marker, stream, counts = keys[:3]
    ack = args[2] == "1"
    inside = ack and len(targets) == 1 and same_slot(targets[0].stream, stream)
    outcomes = []
    for target, fields in zip(targets, entries, strict=True):
        placed = [
            colocated(target.stream, marker),
            stream if inside else target.stream,  # not used by the script without the ack
            colocated(target.stream, counts),
            target.stream,
        ]
        step = [*args[:2], "1" if inside else "0", *args[3:5]]
        if fits(len(fields) + 5):
            outcome = await handler._script(keys=placed, args=[*step, len(fields), *fields])
        else:
            outcome = await handler._forward_wide([target], [fields], placed, step[:4])
        outcomes.append(_text(outcome))
    if ack and not inside:
        assert handler._redis is not None
        await handler._redis.xack(stream, args[0], args[1])
    return "forwarded" if "forwarded" in outcomes else "duplicate"


async def run_once(
    redis: Redis,
    script: str,
    marker: str,
    stream: str,
    commands: Sequence[tuple[Any, ...]],
    args: list[Any],
) -> bool:
    """`Effects.commit` on a cluster: the recorded commands grouped by the slot of their key,
    one RUN_ONCE per slot with its own marker there; True if any group ran now.

    Args:
        args: group, entry id, ack flag, marker TTL (RUN_ONCE's first four).
    """
    groups: dict[int, list[tuple[Any, ...]]] = {}
    for command in commands:
        groups.setdefault(key_slot(str(command[1])), []).append(command)
    ack = args[2] == "1"
    anchors = [str(group[0][1]) for group in groups.values()] or [stream]
    inside = ack and len(anchors) == 1 and same_slot(anchors[0], stream)
    applied = False
    for anchor, group in zip(anchors, list(groups.values()) or [[]], strict=True):
        written = list(dict.fromkeys(str(c[1]) for c in group))
        words: list[Any] = []
        for command in group:
            words += [len(command), *command]
        result = await redis.eval(
            script,
            2 + len(written),
            colocated(anchor, marker),
            stream if inside else anchor,  # not used by the script without the ack
            *written,
            *args[:2],
            "1" if inside else "0",
            args[3],
            len(group),
            *words,
        )
        applied = applied or bool(int(result))
    if ack and not inside:
        await redis.xack(stream, args[0], args[1])
    return applied
