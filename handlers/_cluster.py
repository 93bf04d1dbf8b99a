"""The built-in handlers on a Redis Cluster: each effect atomic in its own slot, the ack after.

On one server a handler's script writes the effect, its dedupe marker, its counters and the
XACK of the source entry in one step, for a whole batch of events. On a cluster a script may
only touch keys of one slot, and a handler's targets (an entity hash, a relay's target
stream, the keys an `Effects` records) usually live in other slots than the source stream.
So there, one event at a time:

- every effect runs in the slot of its target, with its marker, version and counters kept
  beside it (`worker.keys.colocated`: `{<target>}<name>`), in the same script as before,
  called with a batch of one event: the effect and its marker still land together or not
  at all;
- the XACK stays inside that script when the source stream shares the slot (nothing
  changes: fully atomic); otherwise it follows as its own command once every effect is in.
  A crash between the two leaves the entry pending; its retry finds the markers, writes
  nothing again, and acks. Effects stay exactly once; only the ack moved.

A relay to several targets runs one such step per target, each with its own marker, so a
crash between two targets is finished by the retry without a second entry in either.

Failover. The effect and the ack then live on two primaries, replicated independently: a
failover of the effect's primary can lose the effect while the ack survives, and the event
is gone for good. With `wait_replicas` the effect script and WAIT go to the target's primary
on one connection (`handlers._wait.effect`), and the ack follows only once the replicas
hold the effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from handlers._batch import pack
from handlers._wait import effect
from worker.keys import colocated, key_slot, same_slot

if TYPE_CHECKING:
    from handlers.projection import Plan, Projection
    from handlers.relay import Relay, Target
    from worker.message import Message


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def project(handler: Projection, stream: str, group: str, plan: Plan) -> tuple[str, bool]:
    """One event through the projection's PROJECT script as a batch of one, its versions,
    counts and marker beside the entity hash; the script's reply and whether it settled the
    event (applied, stale or duplicate, and acknowledged if the handler acks)."""
    from handlers.projection import OUTCOMES

    entity = plan.entity
    ack = handler.acks_atomically
    inside = ack and same_slot(entity, stream)
    keys = [
        colocated(entity, handler.versions_key),
        colocated(entity, handler.counts_key),
        stream if inside else entity,  # not used by the script without the ack
        entity,
        colocated(entity, plan.marker),
    ]
    args = [group, "1" if inside else "0", handler.dedup_ms, 1, 0, pack(plan.args)]
    (reply,) = await effect(handler, entity, keys, args, str(plan.args[0]), not inside)
    outcome = _text(reply)
    settled = outcome in OUTCOMES
    if settled and ack and not inside:
        assert handler._redis is not None, "on_startup was not called"
        await handler._redis.xack(stream, group, plan.args[0])
    return outcome, settled


async def relay(
    handler: Relay, msg: Message, targets: Sequence[Target], entries: Sequence[list[bytes | str]]
) -> str:
    """One event through RELAY once per target, as a batch of one, its marker and counters in
    the target's slot; 'forwarded', 'duplicate', or the first error text."""
    ack = handler.acks_atomically
    streams = [target.stream_for(msg) for target in targets]
    inside = ack and len(streams) == 1 and same_slot(streams[0], msg.stream)
    marker, counts = handler.marker(msg), f"{handler.state}:counts:{msg.stream}"
    maxlen = "" if handler.maxlen is None else handler.maxlen
    outcomes = []
    for target, fields in zip(streams, entries, strict=True):
        keys = [
            msg.stream if inside else target,  # not used by the script without the ack
            colocated(target, counts),
            colocated(target, marker),
            target,
        ]
        event = [msg.id, 3, 1, 4, len(fields), *fields]  # marker KEYS[3], target KEYS[4]
        args = [msg.group, "1" if inside else "0", handler.dedup_ms, maxlen, 1, 0, pack(event)]
        (reply,) = await effect(handler, target, keys, args, msg.id, not inside)
        outcome = _text(reply)
        if outcome not in ("forwarded", "duplicate"):
            return outcome
        outcomes.append(outcome)
    if ack and not inside:
        assert handler._redis is not None, "on_startup was not called"
        await handler._redis.xack(msg.stream, msg.group, msg.id)
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
