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
it follows the script (`handlers._cluster`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from handlers import _cluster
from handlers._fields import (
    FieldMap,
    data_object,
    encode,
    entity_key,
    field_map,
    milliseconds,
    pick,
)
from worker import Handler, HandlerContext, Message
from worker.topology import is_cluster

log = structlog.get_logger("handlers.projection")

ACTIONS = ("set", "merge", "delete")

PROJECT = """
-- KEYS[1] entity hash, KEYS[2] versions hash, KEYS[3] counts hash, KEYS[4] source stream,
-- KEYS[5] dedup marker (used when the event has no version)
-- ARGV[1] entity key, ARGV[2] version or '', ARGV[3] action, ARGV[4] group, ARGV[5] entry id,
-- ARGV[6] '1' to XACK, ARGV[7] marker TTL ms, ARGV[8] n = number of field/value items,
-- ARGV[9 .. 8+n] field/value pairs to write, ARGV[9+n ..] fields to remove (null in data)
-- Redis does not roll a script back when a command fails half-way, so everything that can
-- fail is checked before the first write.
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
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a hash')
end
local outcome
if ARGV[2] ~= '' then
  if not parse(ARGV[2]) then
    return redis.error_reply('ERR version is not an integer: ' .. ARGV[2])
  end
  local current = redis.call('HGET', KEYS[2], ARGV[1])
  if current and not parse(current) then
    return redis.error_reply('ERR ' .. KEYS[2] .. ' holds a version that is not an integer for '
      .. ARGV[1] .. ': ' .. current)
  end
  if current and compare(current, ARGV[2]) >= 0 then
    outcome = 'stale'
  end
elseif redis.call('EXISTS', KEYS[5]) == 1 then
  outcome = 'duplicate'
end
if not outcome then
  if ARGV[3] ~= 'merge' then
    redis.call('DEL', KEYS[1])
  end
  local n = tonumber(ARGV[8])
  if ARGV[3] ~= 'delete' and n > 0 then
    redis.call('HSET', KEYS[1], unpack(ARGV, 9, 8 + n))
  end
  if ARGV[3] == 'merge' and #ARGV > 8 + n then
    redis.call('HDEL', KEYS[1], unpack(ARGV, 9 + n))
  end
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  else
    redis.call('SET', KEYS[5], '1', 'PX', ARGV[7])
  end
  outcome = 'applied'
end
redis.call('HINCRBY', KEYS[3], outcome, 1)
if ARGV[6] == '1' then
  redis.call('XACK', KEYS[4], ARGV[4], ARGV[5])
end
return outcome
"""


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

    Raises:
        ValueError: invalid options (the runtime reports them as a configuration error).
    """

    name = "projection"

    def __init__(
        self,
        *,
        prefix: str,
        events: Mapping[str, str | Mapping[str, Any]],
        fields: Sequence[str] | Mapping[str, str] | None = None,
        key_field: str | None = None,
        state_prefix: str | None = None,
        ack: bool = True,
        dedup_ttl: float = 86400.0,
    ) -> None:
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

    def entity(self, key: str) -> str:
        """The hash that holds entity `key`."""
        return self.prefix + key

    async def handle(self, msg: Message) -> None:
        rule = self.rules.get(msg.type or "")
        if rule is None:
            self.counts["ignored"] += 1
            return
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
        origin_stream, origin_id = msg.origin
        marker = f"{self.state}:seen:{msg.group}:{origin_stream}:{origin_id}"
        assert self._script is not None, "on_startup was not called"
        keys = [self.entity(key), self.versions_key, self.counts_key, msg.stream, marker]
        args: list[Any] = [
            key,
            "" if version is None else str(version),  # canonical: no '+', no zeros
            rule.action,
            msg.group,
            msg.id,
            "1" if self.acks_atomically else "0",
            self.dedup_ms,
            len(pairs),
            *pairs,
            *removed,
        ]
        if self._cluster and self._redis is not None:  # keys beside the entity: _cluster
            outcome = await _cluster.project(self._redis, self._script, keys, args)
        else:
            outcome = await self._script(keys=keys, args=args)
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        self.counts[outcome] += 1
        if outcome != "applied":
            log.debug(
                "projection.skipped",
                outcome=outcome,
                stream=msg.stream,
                message_id=msg.id,
                entity=key,
                version=version,
            )
