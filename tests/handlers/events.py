"""Event histories for handler tests: in-order truth, and deliveries that reorder and repeat."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker import Message, event_fields

PROJECTION_EVENTS = {"item.set": "set", "item.merged": "merge", "item.deleted": "delete"}
"""The projection rules the tests use: every event carries the item's full state."""


@dataclass(frozen=True)
class Event:
    type: str
    key: str
    version: int | None
    data: dict[str, Any]

    def fields(self) -> dict[str, str]:
        return event_fields(self.type, self.data, key=self.key, version=self.version)


def history(
    rng: random.Random, entities: int, max_versions: int = 6, *, deletes: bool = True
) -> list[Event]:
    """Each entity's events in version order (1, 2, ...), entities interleaved at random."""
    per_entity: list[list[Event]] = []
    for n in range(entities):
        key = f"e{n}"
        events = []
        for version in range(1, rng.randint(1, max_versions) + 1):
            kinds = ["item.set", "item.merged"] + (["item.deleted"] if deletes else [])
            kind = "item.set" if version == 1 else rng.choice(kinds)
            data = {} if kind == "item.deleted" else {"x": rng.randint(0, 999), "y": f"y{version}"}
            events.append(Event(kind, key, version, data))
        per_entity.append(events)
    merged: list[Event] = []
    while per_entity:
        queue = rng.choice(per_entity)
        merged.append(queue.pop(0))
        if not queue:
            per_entity.remove(queue)
    return merged


def disorder(rng: random.Random, events: Sequence[Event], duplicates: float = 0.1) -> list[Event]:
    """The same events with neighbours swapped at random and some published twice."""
    out = list(events)
    for i in range(len(out) - 1):
        if rng.random() < 0.2:
            out[i], out[i + 1] = out[i + 1], out[i]
    for event in list(out):
        if rng.random() < duplicates:
            out.insert(rng.randint(out.index(event), len(out)), event)
    return out


def latest(events: Sequence[Event]) -> dict[str, Event]:
    """The newest version of each entity: what in-order delivery ends with."""
    newest: dict[str, Event] = {}
    for event in events:
        assert event.version is not None
        if event.key not in newest or newest[event.key].version < event.version:  # type: ignore[operator]
            newest[event.key] = event
    return newest


def expected_hashes(events: Sequence[Event]) -> dict[str, dict[str, str]]:
    """entity key -> hash fields after in-order delivery of `events` (deleted ones absent)."""
    return {
        key: {"x": str(e.data["x"]), "y": e.data["y"]}
        for key, e in latest(events).items()
        if e.type != "item.deleted"
    }


async def publish(redis: Redis, stream: str, events: Sequence[Event]) -> list[str]:
    """XADD every event in one pipeline; returns the entry ids in order."""
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, event.fields())  # type: ignore[arg-type]
    return [i.decode() for i in await pipe.execute()]


async def delivered(redis: Redis, stream: str, group: str, count: int) -> list[Message]:
    """Create `group` on `stream` and read `count` entries through it, as a worker would."""
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    reply = await redis.xreadgroup(group, "tester", {stream: ">"}, count=count)
    return [
        Message(stream, entry_id.decode(), fields, 1, group) for entry_id, fields in reply[0][1]
    ]


async def hashes(redis: Redis, prefix: str) -> dict[str, dict[str, str]]:
    """Every hash under `prefix`, decoded, keyed by what follows the prefix."""
    found: dict[str, dict[str, str]] = {}
    async for key in redis.scan_iter(match=prefix + "*", count=1000):
        fields = await redis.hgetall(key)
        found[key.decode()[len(prefix) :]] = {k.decode(): v.decode() for k, v in fields.items()}
    return found


def redelivered(rng: random.Random, messages: Sequence[Message], picks: list[int]) -> list[Message]:
    """`messages` in order, plus redeliveries of the picked ones, each somewhere after the
    message's first delivery (a redelivery never overtakes the delivery it repeats)."""
    deliveries = list(messages)
    for n in picks:
        msg = messages[n % len(messages)]
        first = next(i for i, d in enumerate(deliveries) if d is msg)
        deliveries.insert(rng.randint(first + 1, len(deliveries)), msg)
    return deliveries
