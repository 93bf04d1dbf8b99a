"""The built-in handlers on a Redis Cluster: exactly once when their targets live in other
slots (effect and marker in the target's slot, ack after) and in the stream's own slot (one
atomic script, ack included)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from handlers.idempotent import Effects
from handlers.projection import Projection
from handlers.relay import Relay
from tests.handlers.events import PROJECTION_EVENTS, Event, delivered
from tests.helpers import pending_count
from worker.keys import colocated, key_slot

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def apart(anchor: str, stem: str) -> str:
    """A name under `stem` whose slot is not `anchor`'s."""
    n = 0
    while key_slot(f"{stem}{n}") == key_slot(anchor):
        n += 1
    return f"{stem}{n}"


async def source(redis: Redis, stream: str, events: list[Event]) -> str:
    group = "g-" + uuid.uuid4().hex[:6]
    for event in events:
        await redis.xadd(stream, event.fields())  # type: ignore[arg-type]
    return group


class TestProjection:
    @pytest.mark.parametrize("same_slot", [False, True], ids=["entity-elsewhere", "same-slot"])
    async def test_redelivered_events_apply_once_and_every_entry_is_acked(
        self, cluster: Redis, same_slot: bool
    ) -> None:
        """Each event applies once however often it is delivered, stale ones are skipped, and
        the projection's own ack leaves nothing pending, whether the entity hash shares the
        stream's slot (one script) or not (script in the entity's slot, ack after)."""
        run = uuid.uuid4().hex[:8]
        stream = f"{{{run}}}:s" if same_slot else f"{run}:s"
        prefix = f"{{{run}}}:p:" if same_slot else apart(stream, f"{run}:p")
        events = [
            Event("item.set", "k", 1, {"x": 1}),
            Event("item.merged", "k", 2, {"y": 2}),
            Event("item.set", "v", None, {"x": 5}),
        ]
        group = await source(cluster, stream, events)
        msgs = await delivered(cluster, stream, group, 3)
        entity = prefix + "k"
        assert (key_slot(entity) == key_slot(stream)) is same_slot
        p = Projection(prefix=prefix, events=PROJECTION_EVENTS, ack=True)
        p.use(cluster)
        for msg in [*msgs, *msgs, msgs[0]]:  # every one redelivered, the first twice
            await p.handle(msg)
        assert await cluster.hgetall(entity) == {b"x": b"1", b"y": b"2"}
        assert await cluster.hgetall(prefix + "v") == {b"x": b"5"}
        assert p.counts == {"applied": 3, "stale": 3, "duplicate": 1}
        # the counters live beside the entities (one hash per tag), atomically with the effects
        totals: dict[bytes, int] = {}
        for key in {colocated(prefix + e, p.counts_key) for e in ("k", "v")}:
            for outcome, n in (await cluster.hgetall(key)).items():
                totals[outcome] = totals.get(outcome, 0) + int(n)
        assert totals == {b"applied": 3, b"stale": 3, b"duplicate": 1}
        assert await pending_count(cluster, stream, group) == 0


class TestRelay:
    @pytest.mark.parametrize("same_slot", [False, True], ids=["targets-elsewhere", "same-slot"])
    async def test_each_entry_reaches_each_target_once(
        self, cluster: Redis, same_slot: bool
    ) -> None:
        """Redelivered entries add nothing twice to the targets, and end acked."""
        run = uuid.uuid4().hex[:8]
        stream = f"{{{run}}}:in"
        if same_slot:
            targets = [f"{{{run}}}:out"]
        else:
            targets = [apart(stream, f"{run}:a"), apart(stream, f"{run}:b")]
        group = await source(cluster, stream, [Event("item.set", f"k{n}", n, {}) for n in range(4)])
        msgs = await delivered(cluster, stream, group, 4)
        relay = Relay(to=targets, ack=True)
        relay.use(cluster)
        for msg in [*msgs, *msgs]:
            await relay.handle(msg)
        for target in targets:
            entries: list[Any] = await cluster.xrange(target)
            assert [f[b"source_id"].decode() for _, f in entries] == [m.id for m in msgs]
        assert relay.counts == {"forwarded": 4, "duplicate": 4}
        assert await pending_count(cluster, stream, group) == 0


class TestEffects:
    async def test_effects_in_several_slots_apply_once_then_ack(self, cluster: Redis) -> None:
        """Writes to keys in three slots land once per message across redeliveries, and the
        entry is acked after them."""
        run = uuid.uuid4().hex[:8]
        stream = f"{run}:in"
        group = await source(cluster, stream, [Event("t", "k", None, {})])
        (msg,) = await delivered(cluster, stream, group, 1)
        counters = [f"{run}:c{n}" for n in range(6)]
        assert len({key_slot(c) for c in counters}) > 1
        outcomes = []
        for _ in range(3):
            tx = Effects(cluster, msg, ack=True)
            for counter in counters:
                tx.incr(counter)
            outcomes.append(await tx.commit())
        assert outcomes == [True, False, False]
        assert [int(await cluster.get(c) or 0) for c in counters] == [1] * 6
        assert await pending_count(cluster, stream, group) == 0


class CountingScript:
    """Wraps a handler's registered script, recording the slots of the keys of each call."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls: list[set[int]] = []

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls.append({key_slot(k) for k in keys})
        return await self.script(keys=keys, args=args)


class TestBatchesOverSeveralSlots:
    async def test_projection_applies_each_event_once_one_call_per_slot(
        self, cluster: Redis
    ) -> None:
        """A batch whose entities live in several slots (one of them the stream's) takes one
        script call per slot, applies each event once in its entity's slot across a
        redelivery, counts beside each entity, and ends acked."""
        run = uuid.uuid4().hex[:8]
        stream = f"{{{run}}}:s"
        prefix = f"{run}:p:"
        # 12 entities over 3 hash tags, and one in the stream's slot
        keys = [f"{{{run}-{n % 3}}}k{n}" for n in range(12)] + [f"{{{run}}}:own"]
        slots = {key_slot(prefix + k) for k in keys}
        assert len(slots) > 2 and key_slot(stream) in slots
        events = [Event("item.set", k, 1, {"x": n}) for n, k in enumerate(keys)]
        events.append(Event("item.unknown", "k0", 2, {}))  # no rule: acknowledged only
        group = await source(cluster, stream, events)
        msgs = await delivered(cluster, stream, group, len(events))
        p = Projection(prefix=prefix, events=PROJECTION_EVENTS, ack=True)
        p.use(cluster)
        script = p._script = CountingScript(p._script)
        assert await p.handle_batch(msgs) == [None] * len(msgs)
        assert len(script.calls) == len(slots)
        assert all(len(call) == 1 for call in script.calls)  # each call within one slot
        assert await p.handle_batch(msgs[:5]) == [None] * 5  # redelivered: stale now
        for n, k in enumerate(keys):
            assert await cluster.hgetall(prefix + k) == {b"x": str(n).encode()}
        totals: dict[bytes, int] = {}
        for key in {colocated(prefix + k, p.counts_key) for k in keys}:  # one per hash tag
            for outcome, count in (await cluster.hgetall(key)).items():
                totals[outcome] = totals.get(outcome, 0) + int(count)
        assert totals == {b"applied": len(keys), b"stale": 5}
        assert await pending_count(cluster, stream, group) == 0

    async def test_relay_forwards_once_per_target_one_call_per_target(self, cluster: Redis) -> None:
        """A batch relayed to two targets in other slots takes one call per target; an event
        one target refuses is forwarded to the other, left unacknowledged, and its retry
        completes it there without a second entry in the target that took it."""
        run = uuid.uuid4().hex[:8]
        stream = f"{run}:in"
        targets = [apart(stream, f"{run}:a"), apart(stream, f"{run}:b")]
        assert key_slot(targets[0]) != key_slot(targets[1])
        group = await source(cluster, stream, [Event("item.set", f"k{n}", n, {}) for n in range(6)])
        msgs = await delivered(cluster, stream, group, 6)
        await cluster.set(targets[1], "not a stream")
        relay = Relay(to=targets, ack=True)
        relay.use(cluster)
        script = relay._script = CountingScript(relay._script)
        outcomes = await relay.handle_batch(msgs)
        assert len(script.calls) == 2
        assert all(o is not None and "WRONGTYPE" in str(o) for o in outcomes)
        assert await pending_count(cluster, stream, group) == 6
        await cluster.delete(targets[1])
        assert await relay.handle_batch(msgs) == [None] * 6
        for target in targets:
            entries: list[Any] = await cluster.xrange(target)
            assert [f[b"source_id"].decode() for _, f in entries] == [m.id for m in msgs]
        assert relay.counts == {"forwarded": 6}
        assert await pending_count(cluster, stream, group) == 0
