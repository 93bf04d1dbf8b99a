"""Redis projection: a CQRS read model of one hash per entity, kept exactly in step with events.

Each event type maps to an action on the hash `<prefix><key>`:

- `set`: replace the entity with the selected fields of `data`;
- `merge`: write the selected fields, keep the others;

A field whose value is JSON null is left out (`set`) or removed (`merge`). Strings are stored
as they are, anything else as compact JSON (`12.5`, `true`, `{"a":1}`).
- `delete`: remove the entity.

Versions. Every entity remembers the version it last applied (in the hash `<state>:versions`,
which outlives a deleted entity, so a stale event cannot bring it back). Versions are integers
of any size, negative ones included, compared exactly (as decimal digits, not as Lua's doubles,
so 2^53 + 1 is newer than 2^53). An event whose `version` is not newer is skipped and counted
as `stale`: duplicates and reordering leave the
state of the newest version. With out-of-order delivery, an older event that arrives late is
dropped whole, so events should carry the entity's full state (event-carried state transfer):
a partial `merge` event that lost the race is not applied later.

Events without a version are deduplicated by message id instead: a marker key
`<state>:seen:<group>:<stream>:<id>` (for a replayed dead letter, the stream and id of the
entry it copies: `Message.origin`) with a TTL (`dedup_ttl`, one day by default), set in the
same script. A TTL bounds the memory; it must outlast the time an entry can stay pending
(`max_attempts` x `retry_max` plus `claim_idle`), which it does by orders of magnitude.

Atomicity. The guard check, the change, the recorded version, an outcome counter
(`<state>:counts`: applied / stale / duplicate) and, with `ack = true`, the XACK run in one Lua
script: a crash leaves either all of them or none. With `ack = true` the handler must be the
only one on its stream (the runtime enforces it); `ack = false` lets it share a stream, and the
guard alone keeps the effect exactly once while the runtime acknowledges afterwards.

On a Redis Cluster the versions, counts and marker keys are kept beside each entity
(`{<entity>}<state>:versions`, ...), so the guard, the change and the counter stay one
script in the entity's slot; the XACK stays in it when the stream shares that slot, else
it follows the scripts (`handlers._cluster`). There a batch is applied in one script call
per slot of its entities.

Batches. `Projection(...)` is a batch handler unless `batch=False`: one script call applies
a whole batch (up to 500 events per call) in order, each event with its own guard, and XACKs
the events it settled in the same call; an event that fails its checks (a key that is not a
hash) is neither applied nor acknowledged, and only it is retried. Field lists are written in
slices, so an event may carry any number of fields (Lua's `unpack` stops near 8,000 values).

On one server (or a primary with replicas) the script touches the entity, state and stream
keys together, and the ack is part of it. On a Redis Cluster the entities may live in other
slots: there the script runs once per entity slot and the XACK follows (`handlers._cluster`),
with `wait_replicas` to hold the ack until a replica has the effect (`handlers._wait`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from handlers import _cluster
from handlers._batch import UNPACK_ITEMS, by_stream, chunks, failure, pack, text
from handlers._fields import (
    FieldMap,
    data_object,
    encode,
    entity_key,
    field_map,
    milliseconds,
    pick,
)
from handlers._wait import check_wait, note_wait
from worker import Handler, HandlerContext, MalformedMessage, Message
from worker.batch import BatchHandler, Outcome
from worker.errors import EffectNotReplicated
from worker.topology import is_cluster

log = structlog.get_logger("handlers.projection")

ACTIONS = ("set", "merge", "delete")

PROJECT = (
    UNPACK_ITEMS
    + """
-- Applies a batch of events in order, each exactly once, and acknowledges them.
-- KEYS[1] versions hash, KEYS[2] counts hash, KEYS[3] source stream,
-- then per event e (1-based): KEYS[2 + 2e] entity hash, KEYS[3 + 2e] dedup marker.
-- ARGV[1] group, ARGV[2] '1' to XACK, ARGV[3] marker TTL ms, ARGV[4] number of events,
-- ARGV[5] number of entry ids to acknowledge only (no rule for their type), those ids, then
-- the events packed in one argument (`handlers._batch.pack`: one argument is far cheaper for
-- the client to send than thousands), per event: entry id, entity key, version or '',
-- action, n, r, n field/value items, r fields to remove (null in data).
-- An optional last argument '4' gives every event keys of its own (a Redis Cluster, where
-- they live beside each entity: `handlers._cluster`): per event e KEYS[4e] entity hash,
-- KEYS[4e + 1] dedup marker, KEYS[4e + 2] versions hash, KEYS[4e + 3] counts hash; KEYS[1]
-- and KEYS[2] are then not used.
-- Returns one reply per event: 'applied', 'stale', 'duplicate', or an error text. An event
-- that fails is neither applied nor acknowledged; the others are. Redis does not roll a
-- script back when a command fails half-way, so everything that can fail is checked before
-- an event's first write.
--
-- Versions are compared as decimal integers of any size, never with tonumber: Lua numbers
-- are doubles, which cannot tell 2^53 from 2^53 + 1 (nanosecond timestamps, snowflake ids).
-- Digits are compared byte by byte, not with `<` on strings, which follows the locale.
-- The digits of integer v without sign or leading zeros, and whether it is below zero;
-- nil when v is not an integer.
local function parse(v)
  local sign, digits = string.match(v, '^([+-]?)0*(%d+)$')
  if not digits then
    return nil
  end
  return digits, sign == '-' and digits ~= '0'
end
-- -1, 0 or 1 as integer a is below, equal to or above integer b (canonical digit strings).
local function compare(a, b)
  local a_digits, a_negative = parse(a)
  local b_digits, b_negative = parse(b)
  if a_negative ~= b_negative then
    return a_negative and -1 or 1
  end
  local order = 0
  if #a_digits ~= #b_digits then
    order = #a_digits < #b_digits and -1 or 1
  else
    for i = 1, #a_digits do
      local x, y = string.byte(a_digits, i), string.byte(b_digits, i)
      if x ~= y then
        order = x < y and -1 or 1
        break
      end
    end
  end
  return a_negative and -order or order
end
-- One command over A[first .. last], in slices: Lua's unpack refuses more than about 8,000
-- values, and HSET/HDEL of a wide entry may pass more.
local A
local function sliced(command, key, first, last)
  for i = first, last, 7000 do
    redis.call(command, key, unpack(A, i, math.min(i + 6999, last)))
  end
end
-- The outcome of one event, or an error text; writes nothing unless it returns 'applied'.
local function apply(entity, marker, versions, key, version, action, first, n, r)
  local kind = redis.call('TYPE', entity).ok
  if kind ~= 'hash' and kind ~= 'none' then
    return 'WRONGTYPE ' .. entity .. ' holds a ' .. kind .. ', not a hash'
  end
  if version ~= '' then
    if not parse(version) then
      return 'ERR version is not an integer: ' .. version
    end
    local current = redis.call('HGET', versions, key)
    if current and not parse(current) then
      return 'ERR ' .. versions .. ' holds a version that is not an integer for ' .. key
        .. ': ' .. current
    end
    if current and compare(current, version) >= 0 then
      return 'stale'
    end
  elseif redis.call('EXISTS', marker) == 1 then
    return 'duplicate'
  end
  if action ~= 'merge' then
    redis.call('DEL', entity)
  end
  if action ~= 'delete' and n > 0 then
    sliced('HSET', entity, first, first + n - 1)
  end
  if action == 'merge' and r > 0 then
    sliced('HDEL', entity, first + n, first + n + r - 1)
  end
  if version ~= '' then
    redis.call('HSET', versions, key, version)
  else
    redis.call('SET', marker, '1', 'PX', ARGV[3])
  end
  return 'applied'
end
local acks, replies, tally = {}, {}, {}
local skip = tonumber(ARGV[5])
for i = 6, 5 + skip do
  acks[#acks + 1] = ARGV[i]
end
A = unpack_items(ARGV[6 + skip])
local stride = tonumber(ARGV[7 + skip] or '2')
local pos = 1
for e = 1, tonumber(ARGV[4]) do
  local n, r = tonumber(A[pos + 4]), tonumber(A[pos + 5])
  local base = 2 + stride * (e - 1)
  local versions, counts = KEYS[1], KEYS[2]
  if stride == 4 then
    versions, counts = KEYS[base + 4], KEYS[base + 5]
  end
  local outcome = apply(KEYS[base + 2], KEYS[base + 3], versions, A[pos + 1], A[pos + 2],
    A[pos + 3], pos + 6, n, r)
  replies[e] = outcome
  if outcome == 'applied' or outcome == 'stale' or outcome == 'duplicate' then
    tally[counts] = tally[counts] or {}
    tally[counts][outcome] = (tally[counts][outcome] or 0) + 1
    acks[#acks + 1] = A[pos]
  end
  pos = pos + 6 + n + r
end
for key, outcomes in pairs(tally) do
  for outcome, count in pairs(outcomes) do
    redis.call('HINCRBY', key, outcome, count)
  end
end
if ARGV[2] == '1' then
  for i = 1, #acks, 7000 do
    redis.call('XACK', KEYS[3], ARGV[1], unpack(acks, i, math.min(i + 6999, #acks)))
  end
end
return replies
"""
)


@dataclass(frozen=True, slots=True)
class Rule:
    """What one event type does to its entity."""

    action: str
    fields: FieldMap | None
    values: dict[str, str]


def parse_rule(event_type: str, spec: str | Mapping[str, Any], default: FieldMap | None) -> Rule:
    """One entry of the `events` option: an action name, or a table with action/fields/values.

    Raises:
        ValueError: an unknown action or key.
    """
    where = f"events.{event_type}"
    if isinstance(spec, str):
        spec = {"action": spec}
    unknown = set(spec) - {"action", "fields", "values"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (action, fields, values)")
    action = spec.get("action", "merge")
    if action not in ACTIONS:
        raise ValueError(f"{where}: action must be one of {', '.join(ACTIONS)}, not {action!r}")
    fields = field_map(f"{where}.fields", spec["fields"]) if "fields" in spec else default
    values = {str(k): encode(v) for k, v in dict(spec.get("values", {})).items()}
    return Rule(action, fields, values)


class Projection(Handler):
    """Keeps `<prefix><key>` hashes in step with events; see the module docstring.

    Args:
        prefix: prefix of the entity hashes, e.g. `payment:`.
        events: event type -> `set` | `merge` | `delete`, or a table
            `{action = ..., fields = [...] or {target = "source"}, values = {field = value}}`;
            `values` are constants written beside the fields (e.g. a status).
        fields: default field selection from `data` for every type (None: all fields).
        key_field: take the entity key from `data[key_field]` instead of the `key` field.
        state_prefix: where versions, counters and markers live (`<state>:versions`,
            `<state>:counts`, `<state>:seen:...`); default `syncworker:projection:<prefix>`
            without a trailing colon.
        ack: acknowledge inside the script (must then be alone on the stream).
        dedup_ttl: seconds a message-id marker of a versionless event is kept.
        wait_replicas: on a Redis Cluster, when an entity lives in another slot than the
            stream, acknowledge an event only once this many replicas hold its effect
            (WAIT after the script, on its connection); see `handlers._cluster`. Elsewhere
            the effect and the ack replicate together and nothing is waited for.
        wait_timeout: seconds to wait for them; an event they do not confirm in time is not
            acknowledged and runs again (`worker.EffectNotReplicated`).
        batch: True (the default) builds a batch handler, which writes up to `batch_max`
            messages in one round trip but must be alone on its stream; False handles one
            message at a time and may share the stream (with `ack = false`).
        batch_max: most messages per batch.
        batch_wait: seconds a batch may wait for more messages (see `worker.batch`).

    Raises:
        ValueError: invalid options (the runtime reports them as a configuration error).
    """

    name = "projection"

    def __new__(cls, *args: Any, batch: bool = True, **options: Any) -> Projection:
        # `copy.copy` (Handler.bind) calls __new__ without options: it keeps the class.
        if batch and options and cls is Projection:
            cls = BatchProjection
        return super().__new__(cls)

    def __init__(
        self,
        *,
        batch: bool = True,
        batch_max: int = 100,
        batch_wait: float = 0.002,
        prefix: str,
        events: Mapping[str, str | Mapping[str, Any]],
        fields: Sequence[str] | Mapping[str, str] | None = None,
        key_field: str | None = None,
        state_prefix: str | None = None,
        ack: bool = True,
        dedup_ttl: float = 86400.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if batch_wait < 0:
            raise ValueError("batch_wait must be >= 0 seconds")
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        if not prefix:
            raise ValueError("prefix must not be empty")
        if not events:
            raise ValueError("events must map at least one event type to an action")
        default = field_map("fields", fields)
        self.prefix = prefix
        self.rules = {str(t): parse_rule(str(t), spec, default) for t, spec in events.items()}
        self.key_field = key_field
        self.state = state_prefix or f"syncworker:projection:{prefix.rstrip(':')}"
        self.versions_key = self.state + ":versions"
        self.counts_key = self.state + ":counts"
        self.acks_atomically = ack
        self.dedup_ms = milliseconds("dedup_ttl", dedup_ttl)
        self.wait_replicas, self.wait_timeout = check_wait(wait_replicas, wait_timeout)
        self._unconfirmed: dict[str, float] = {}  # primary -> when WAIT last fell short
        self.counts: Counter[str] = Counter()
        self._redis: Redis | None = None
        self._script: Any = None
        self._cluster = False

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.use(ctx.redis)

    def use(self, redis: Redis) -> None:
        """Write through `redis` (what `on_startup` does; tests call it directly)."""
        self._redis = redis
        self._script = redis.register_script(PROJECT)
        self._cluster = is_cluster(redis)
        note_wait(self, self._cluster)

    def entity(self, key: str) -> str:
        """The hash that holds entity `key`."""
        return self.prefix + key

    async def handle(self, msg: Message) -> None:
        """One message as a batch of one; raises its outcome unless it succeeded."""
        (outcome,) = await self.handle_batch([msg])
        if outcome is not None:
            raise outcome

    async def handle_batch(self, msgs: list[Message]) -> list[Outcome]:
        """Apply `msgs` in order, one script call per chunk of a stream's events.

        Returns:
            Per message: None (applied, stale or duplicate, and acknowledged with `ack`),
            `MalformedMessage` (dead-lettered) or the script's error (retried).
        """
        outcomes: list[Outcome] = [None] * len(msgs)
        for stream, indices in by_stream(msgs).items():
            planned: list[tuple[int, Plan]] = []
            ignored: list[str] = []
            for i in indices:
                try:
                    plan = self.plan(msgs[i])
                except MalformedMessage as exc:
                    outcomes[i] = exc
                    continue
                if plan is None:
                    self.counts["ignored"] += 1
                    ignored.append(msgs[i].id)
                else:
                    planned.append((i, plan))
            group = msgs[indices[0]].group
            if self._cluster:  # a call per slot of the entities: handlers._cluster
                plans = dict(planned)
                replies = await _cluster.project(self, stream, group, planned, ignored)
                for i, outcome in replies:
                    if isinstance(outcome, EffectNotReplicated):  # not acked: runs again
                        outcomes[i] = outcome
                        continue
                    self._count(outcome, outcome in OUTCOMES, i, plans[i], stream, outcomes, msgs)
                planned, ignored = [], []
            for part in chunks([len(plan.args) for _, plan in planned]):
                await self._run(stream, group, planned[part], ignored, outcomes, msgs)
                ignored = []  # acknowledged by the first call
            if ignored and self.acks_atomically:
                assert self._redis is not None, "on_startup was not called"
                await self._redis.xack(stream, group, *ignored)
        return outcomes

    def plan(self, msg: Message) -> Plan | None:
        """The script's keys and arguments for `msg`; None when no rule wants its type.

        Raises:
            MalformedMessage: no entity key, `data` not an object, or a non-integer version.
        """
        rule = self.rules.get(msg.type or "")
        if rule is None:
            return None
        key = entity_key(msg, self.key_field)
        version = msg.version
        pairs: list[str] = []
        removed: list[str] = []
        if rule.action != "delete":
            for name, value in pick(data_object(msg), rule.fields).items():
                if value is None:
                    removed.append(name)
                else:
                    pairs += (name, encode(value))
            for name, value in rule.values.items():
                pairs += (name, value)
        if rule.action != "merge":
            removed = []
        origin_stream, origin_id = msg.origin
        marker = f"{self.state}:seen:{msg.group}:{origin_stream}:{origin_id}"
        args: list[str | int] = [
            msg.id,
            key,
            "" if version is None else str(version),  # canonical: no '+', no zeros
            rule.action,
            len(pairs),
            len(removed),
            *pairs,
            *removed,
        ]
        return Plan(key, self.entity(key), marker, args)

    async def _run(
        self,
        stream: str,
        group: str,
        planned: Sequence[tuple[int, Plan]],
        ignored: Sequence[str],
        outcomes: list[Outcome],
        msgs: Sequence[Message],
    ) -> None:
        keys = [self.versions_key, self.counts_key, stream]
        args: list[bytes | str | int] = [
            group,
            "1" if self.acks_atomically else "0",
            self.dedup_ms,
            len(planned),
            len(ignored),
            *ignored,
        ]
        for _, plan in planned:
            keys += (plan.entity, plan.marker)
        args.append(pack(item for _, plan in planned for item in plan.args))
        assert self._script is not None, "on_startup was not called"
        replies = await self._script(keys=keys, args=args)
        for (i, plan), reply in zip(planned, replies, strict=True):
            outcome = text(reply)
            self._count(outcome, outcome in OUTCOMES, i, plan, stream, outcomes, msgs)

    def _count(
        self,
        outcome: str,
        settled: bool,
        i: int,
        plan: Plan,
        stream: str,
        outcomes: list[Outcome],
        msgs: Sequence[Message],
    ) -> None:
        if not settled:
            outcomes[i] = failure(outcome)
            return
        self.counts[outcome] += 1
        if outcome != "applied":
            log.debug(
                "projection.skipped",
                outcome=outcome,
                stream=stream,
                message_id=msgs[i].id,
                entity=plan.key,
            )


OUTCOMES = frozenset(("applied", "stale", "duplicate"))
"""What the script replies for an event it settled; anything else is an error text."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One event as the script takes it."""

    key: str
    entity: str
    marker: str
    args: list[str | int]


class BatchProjection(Projection, BatchHandler):
    """`Projection` as a batch handler (what `Projection(...)` builds unless `batch=False`): the
    runtime hands it up to `batch_max` messages of its stream at a time, which it writes in
    one round trip. It must be the only handler of its stream."""
