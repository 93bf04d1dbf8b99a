"""The built-in handlers on a Redis Cluster: each effect atomic in its own slot, the ack after.

On one server a handler's script writes the effect, its dedupe marker, its counters and the
XACK of the source entry in one step, for a whole batch of events. On a cluster a script may
only touch keys of one slot, and a handler's targets (an entity hash, a relay's target
stream, the keys an `Effects` records) usually live in other slots than the source stream.
So there, a batch is split by where its effects go:

- the effects of one slot (a projection's entities there; a relay's one target stream) run
  in one call of the same script as before, each with its marker, version and counters kept
  beside its target (`worker.keys.colocated`: `{<target>}<name>`): each effect and its
  marker still land together or not at all. The runtime never puts two messages of one key
  in a batch, and the events of one target share its slot, so per-key order holds;
- the XACK stays inside that script when the source stream shares the slot (nothing
  changes: fully atomic); otherwise one XACK follows once every call of the batch is in,
  for the events all of whose effects are in. A crash between the two leaves the entries
  pending; their retry finds the markers, writes nothing again, and acks. Effects stay
  exactly once; only the ack moved.

A relay to several targets runs one such step per target, each with its own marker, so a
crash between two targets is finished by the retry without a second entry in either.

Failover. The effect and the ack then live on two primaries, replicated independently: a
failover of the effect's primary can lose the effect while the ack survives, and the event
is gone for good. With `wait_replicas` each call's script and WAIT go to the target's
primary on one connection (`handlers._wait.effect`), and the events of that call are
acknowledged only once the replicas hold their effects; unconfirmed, each of them comes
back as `EffectNotReplicated` and is not acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis

from handlers._batch import chunks, pack
from handlers._wait import effect
from worker.errors import EffectNotReplicated
from worker.keys import colocated, key_slot, same_slot

if TYPE_CHECKING:
    from handlers.projection import Plan, Projection
    from handlers.relay import Relay, Target
    from worker.message import Message

T = TypeVar("T")

Reply = str | EffectNotReplicated
"""A script's reply text for one event, or why its effect is not acknowledged yet."""

PER_EVENT_KEYS = "4"
"""PROJECT's last argument for events with keys of their own (versions and counts beside
each entity, not one hash for all)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def project(
    handler: Projection,
    stream: str,
    group: str,
    planned: Sequence[tuple[int, Plan]],
    ignored: Sequence[str],
) -> list[tuple[int, Reply]]:
    """A batch's events through the projection's PROJECT script, one call per slot of their
    entities (and per chunk of it), each event's versions, counts and marker beside its
    entity hash; the script's reply per index of `planned`'s messages. Settled events
    (applied, stale or duplicate) are acknowledged if the handler acks: inside the script
    when the slot is the stream's, else in one XACK after every call, with the `ignored`
    entries (no rule for their type).

    The runtime never puts two messages of one key in a batch, and one entity's events all
    share its slot, so each entity's events still apply in the batch's order.
    """
    from handlers.projection import OUTCOMES

    ack = handler.acks_atomically
    replies: list[tuple[int, Reply]] = []
    after: list[str] = list(ignored) if ack else []
    for events in by_slot(planned, lambda item: item[1].entity).values():
        anchor = events[0][1].entity
        inside = ack and same_slot(anchor, stream)
        for part in chunks([len(plan.args) for _, plan in events]):
            keys = [
                colocated(anchor, handler.versions_key),  # not used with per-event keys
                colocated(anchor, handler.counts_key),
                stream if inside else anchor,  # not used by the script without the ack
            ]
            for _, plan in events[part]:
                entity = plan.entity
                keys += (
                    entity,
                    colocated(entity, plan.marker),
                    colocated(entity, handler.versions_key),
                    colocated(entity, handler.counts_key),
                )
            args = [
                group,
                "1" if inside else "0",
                handler.dedup_ms,
                len(events[part]),
                0,
                pack(item for _, plan in events[part] for item in plan.args),
                PER_EVENT_KEYS,
            ]
            ids = [str(plan.args[0]) for _, plan in events[part]]
            try:
                outcomes = await effect(handler, anchor, keys, args, ids, not inside)
            except EffectNotReplicated as exc:  # not acknowledged: they run again
                replies += [(i, exc.about(str(plan.args[0]))) for i, plan in events[part]]
                continue
            for (i, plan), reply in zip(events[part], outcomes, strict=True):
                outcome = _text(reply)
                replies.append((i, outcome))
                if ack and not inside and outcome in OUTCOMES:
                    after.append(str(plan.args[0]))
    if after:
        assert handler._redis is not None, "on_startup was not called"
        await handler._redis.xack(stream, group, *after)
    return replies


async def relay(
    handler: Relay,
    msgs: Sequence[Message],
    planned: Sequence[tuple[int, Sequence[Target], Sequence[list[bytes | str]]]],
    filtered: Sequence[str],
) -> list[tuple[int, Reply]]:
    """A batch's events through RELAY, one call per target stream (and per chunk of its
    events), each event's marker and the counters in that target's slot; per index of
    `msgs`: 'forwarded', 'duplicate', or the first error text of its targets. An event whose
    every target took it (or had it already) is acknowledged if the handler acks: inside
    the script when the batch has that one target, in the stream's slot; else in one XACK
    after every call, with the `filtered` entries (no target wants their type).
    """
    ack = handler.acks_atomically
    stream, group = msgs[0].stream, msgs[0].group
    steps: dict[str, list[tuple[int, list[bytes | str]]]] = {}
    for i, targets, entries in planned:
        for bound, fields in zip(targets, entries, strict=True):
            steps.setdefault(bound.stream_for(msgs[i]), []).append((i, fields))
    single = all(len(targets) == 1 for _, targets, _ in planned)
    inside = ack and single and len(steps) == 1 and same_slot(next(iter(steps)), stream)
    counts = f"{handler.state}:counts:{stream}"
    maxlen = "" if handler.maxlen is None else handler.maxlen
    results: dict[int, list[Reply]] = {i: [] for i, _, _ in planned}
    for target, events in steps.items():
        sizes = [len(fields) + 5 for _, fields in events]
        for part in chunks(sizes):
            keys = [
                stream if inside else target,  # not used by the script without the ack
                colocated(target, counts),
                target,  # KEYS[3]
            ]
            markers: dict[str, int] = {}
            packed: list[bytes | str | int] = []
            for i, fields in events[part]:
                marker = colocated(target, handler.marker(msgs[i]))
                if marker not in markers:
                    keys.append(marker)
                    markers[marker] = len(keys)
                packed += (msgs[i].id, markers[marker], 1, 3, len(fields), *fields)
            args = [
                group,
                "1" if inside else "0",
                handler.dedup_ms,
                maxlen,
                len(events[part]),
                0,
                pack(packed),
            ]
            ids = [msgs[i].id for i, _ in events[part]]
            try:
                replies = await effect(handler, target, keys, args, ids, not inside)
            except EffectNotReplicated as exc:  # not acknowledged: they run again
                for i, _ in events[part]:
                    results[i].append(exc.about(msgs[i].id))
                continue
            for (i, _), reply in zip(events[part], replies, strict=True):
                results[i].append(_text(reply))
    outcomes: list[tuple[int, Reply]] = []
    settled: list[str] = list(filtered)
    for i, steps_done in results.items():
        failed = [o for o in steps_done if o not in ("forwarded", "duplicate")]
        if failed:
            outcomes.append((i, failed[0]))
            continue
        done = "forwarded" if "forwarded" in steps_done else "duplicate"
        outcomes.append((i, done))
        settled.append(msgs[i].id)
    if inside:
        settled = list(filtered)  # the rest were acknowledged by the script
    if ack and settled:
        assert handler._redis is not None, "on_startup was not called"
        await handler._redis.xack(stream, group, *settled)
    return outcomes


def by_slot(items: Sequence[T], key: Callable[[T], str]) -> dict[int, list[T]]:
    """`items` grouped by the slot of `key(item)`, in order within each group and groups in
    order of their first item."""
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(key_slot(key(item)), []).append(item)
    return groups


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
    groups = by_slot(commands, lambda command: str(command[1]))
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
