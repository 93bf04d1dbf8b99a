"""Relay: forwards events to other streams, transformed, with exactly one downstream entry each.

For example `order.completed` on `orders` becomes `payment.requested` on `payments`. A relay
fans out to one or more target streams; each target may filter types, rename them and pick
fields of `data`. Downstream entries keep the source's fields (`key`, `version`, `event_id`,
...) and gain `source_stream` and `source_id`, so consumers can trace them back.

Exactly once. A redelivered message (the worker crashed after writing, a consumer was taken
over while its handler still ran), or a replayed dead letter of it, must not produce a second
entry. The script checks a marker `<state>:seen:<group>:<stream>:<id>` (for a replay, the
stream and id of the entry it copies: `Message.origin`) with a TTL (`dedup_ttl`, one day by
default), and writes nothing if it exists. The marker, every XADD, an outcome counter
(`<state>:counts:<stream>`) and, with `ack = true`, the XACK happen in one Lua script, so a
crash leaves either all of them or none. The TTL bounds memory; it must outlast the time an
entry can stay pending, which one day does by orders of magnitude.

Entries of more fields than a script can pass to XADD (about 4,000; Lua's `unpack` limit) go
another way, with the same outcome: one plain XADD per target inside MULTI/EXEC, followed in
the same transaction by a script that keeps them, sets the marker and acks, or, for a
duplicate or a target that is not a stream, deletes the entries just added (see
`worker.wide`).

On a Redis Cluster the relay runs one such step per target, in the target's slot, with the
marker and counters kept beside the target (`{<target>}<state>:seen:...`,
`{<target>}<state>:counts:<stream>`); the XACK stays in the step when there is one target in
the source's slot, else it follows the steps (`handlers._cluster`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from handlers import _cluster
from handlers._fields import FieldMap, data_object, field_map, milliseconds, pick
from worker import Handler, HandlerContext, Message
from worker.message import REPLAY_FOR_GROUP, REPLAY_OF_ID, REPLAY_OF_STREAM
from worker.topology import is_cluster
from worker.wide import DROP_NEWEST, add_then_check, fits, tail

RELAY = """
-- KEYS[1] dedup marker, KEYS[2] source stream, KEYS[3] counts hash, KEYS[4..] target streams
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' to XACK, ARGV[4] marker TTL ms,
-- ARGV[5] MAXLEN ('' for none), then per target: n, followed by n field/value items
-- Redis does not roll a script back when a command fails half-way: check the targets' types
-- before the first XADD, and write the marker only after the last one.
for t = 4, #KEYS do
  local kind = redis.call('TYPE', KEYS[t]).ok
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[t] .. ' holds a ' .. kind .. ', not a stream')
  end
end
local outcome = 'duplicate'
if redis.call('EXISTS', KEYS[1]) == 0 then
  local pos = 6
  for t = 4, #KEYS do
    local n = tonumber(ARGV[pos])
    local args = {KEYS[t]}
    if ARGV[5] ~= '' then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = ARGV[5]
    end
    args[#args + 1] = '*'
    for i = pos + 1, pos + n do
      args[#args + 1] = ARGV[i]
    end
    redis.call('XADD', unpack(args))
    pos = pos + n + 1
  end
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
  outcome = 'forwarded'
end
redis.call('HINCRBY', KEYS[3], outcome, 1)
if ARGV[3] == '1' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
end
return outcome
"""

RELAY_WIDE = (
    DROP_NEWEST
    + """
-- KEYS as RELAY. ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' to XACK, ARGV[4] marker TTL ms,
-- then per target: its entry's item count followed by its last 4 items.
-- Runs in MULTI right after one XADD per target: keeps those entries and sets the marker on
-- a first delivery; deletes them for a duplicate, or when a target is not a stream.
local bad = nil
for t = 4, #KEYS do
  local kind = redis.call('TYPE', KEYS[t]).ok
  if kind ~= 'stream' and not bad then
    bad = KEYS[t] .. ' holds a ' .. kind .. ', not a stream'
  end
end
local outcome = 'forwarded'
if bad or redis.call('EXISTS', KEYS[1]) == 1 then
  for t = #KEYS, 4, -1 do
    local p = 5 + (t - 4) * 5
    drop_newest(KEYS[t], tonumber(ARGV[p]), p + 1)
  end
  if bad then
    return redis.error_reply('WRONGTYPE ' .. bad)
  end
  outcome = 'duplicate'
else
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
end
redis.call('HINCRBY', KEYS[3], outcome, 1)
if ARGV[3] == '1' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
end
return outcome
"""
)

SOURCE_FIELDS = ("source_stream", "source_id")
"""Fields every forwarded entry gains."""

_NOT_COPIED = frozenset(
    (
        b"type",
        b"data",
        *(f.encode() for f in (*SOURCE_FIELDS, REPLAY_OF_STREAM, REPLAY_OF_ID, REPLAY_FOR_GROUP)),
    )
)
"""Source fields a forwarded entry does not copy: rewritten ones, and a replay's markers,
which name an entry and a consumer group of the source stream, not of the target."""


@dataclass(frozen=True, slots=True)
class Target:
    """One downstream stream, with its own filter and transformation."""

    stream: str
    types: frozenset[str] | None
    rename: dict[str, str]
    fields: FieldMap | None

    def wants(self, event_type: str | None) -> bool:
        return self.types is None or (event_type is not None and event_type in self.types)


def parse_target(
    index: int,
    spec: str | Mapping[str, Any],
    types: frozenset[str] | None,
    rename: dict[str, str],
    fields: FieldMap | None,
) -> Target:
    """One entry of `to`: a stream name, or a table that overrides the relay-wide settings.

    Raises:
        ValueError: no stream, or unknown keys.
    """
    if isinstance(spec, str):
        spec = {"stream": spec}
    where = f"to[{index}]"
    unknown = set(spec) - {"stream", "types", "rename", "fields"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (stream, types, rename, fields)")
    stream = str(spec.get("stream") or "")
    if not stream:
        raise ValueError(f"{where}: stream must not be empty")
    return Target(
        stream=stream,
        types=frozenset(spec["types"]) if "types" in spec else types,
        rename={**rename, **dict(spec.get("rename", {}))},
        fields=field_map(f"{where}.fields", spec["fields"]) if "fields" in spec else fields,
    )


class Relay(Handler):
    """Forwards events to other streams; see the module docstring.

    Args:
        to: a target stream, or a list of targets: stream names or tables
            `{stream = ..., types = [...], rename = {...}, fields = [...]}` that override the
            relay-wide `types`, `rename` and `fields` below for that target.
        types: event types to forward (None: all the route delivers).
        rename: event type -> new type, e.g. `{"order.completed" = "payment.requested"}`.
        fields: fields of `data` to keep: a list, or a table target = source (None: all).
        maxlen: trim each target to about this many entries (XADD MAXLEN ~); None keeps all.
        state_prefix: where markers and counters live; default `syncworker:relay`.
        ack: acknowledge inside the script (must then be alone on the stream).
        dedup_ttl: seconds the per-message marker is kept.
        dedup: `id` deduplicates redeliveries of one entry (source stream + entry id);
            `event_id` also drops an event the producer published twice (same `event_id`
            field, different entries), falling back to the entry id when it has none.

    Raises:
        ValueError: invalid options.
    """

    name = "relay"

    def __init__(
        self,
        *,
        to: str | Sequence[str | Mapping[str, Any]],
        types: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        fields: Sequence[str] | Mapping[str, str] | None = None,
        maxlen: int | None = None,
        state_prefix: str = "syncworker:relay",
        ack: bool = True,
        dedup_ttl: float = 86400.0,
        dedup: str = "id",
    ) -> None:
        if dedup not in ("id", "event_id"):
            raise ValueError(f"dedup must be 'id' or 'event_id', not {dedup!r}")
        specs: Sequence[str | Mapping[str, Any]] = [to] if isinstance(to, str) else list(to)
        if not specs:
            raise ValueError("to must name at least one target stream")
        if maxlen is not None and maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        default_types = frozenset(types) if types is not None else None
        default_rename = {str(k): str(v) for k, v in (rename or {}).items()}
        default_fields = field_map("fields", fields)
        self.targets = [
            parse_target(i, spec, default_types, default_rename, default_fields)
            for i, spec in enumerate(specs)
        ]
        self.maxlen = maxlen
        self.state = state_prefix
        self.acks_atomically = ack
        self.dedup_ms = milliseconds("dedup_ttl", dedup_ttl)
        self.dedup = dedup
        self.counts: Counter[str] = Counter()
        self._redis: Redis | None = None
        self._script: Any = None
        self._wide_script: Any = None
        self._cluster = False

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.use(ctx.redis)

    def use(self, redis: Redis) -> None:
        """Write through `redis` (what `on_startup` does; tests call it directly)."""
        self._redis = redis
        self._script = redis.register_script(RELAY)
        self._wide_script = redis.register_script(RELAY_WIDE)
        self._cluster = is_cluster(redis)

    def entry(self, msg: Message, target: Target) -> list[bytes | str]:
        """The fields of the downstream entry for `target`, flattened name, value, ..."""
        flat: list[bytes | str] = []
        event_type = msg.type
        for name, value in msg.raw.items():
            if name in _NOT_COPIED:
                continue
            flat += (name, value)
        if event_type is not None:
            flat += ("type", target.rename.get(event_type, event_type))
        if target.fields is not None:
            picked = pick(data_object(msg), target.fields)
            flat += ("data", json.dumps(picked, separators=(",", ":")))
        elif b"data" in msg.raw:
            flat += ("data", msg.raw[b"data"])
        flat += ("source_stream", msg.stream, "source_id", msg.id)
        return flat

    def marker(self, msg: Message) -> str:
        """The dedup marker key of `msg` (a replay's is that of the entry it copies)."""
        stream, entry_id = msg.origin
        if self.dedup == "event_id" and msg.event_id:
            return f"{self.state}:event:{msg.group}:{stream}:{msg.event_id}"
        return f"{self.state}:seen:{msg.group}:{stream}:{entry_id}"

    async def handle(self, msg: Message) -> None:
        targets = [t for t in self.targets if t.wants(msg.type)]
        if not targets:
            self.counts["filtered"] += 1
            return
        args: list[bytes | str | int] = [
            msg.group,
            msg.id,
            "1" if self.acks_atomically else "0",
            self.dedup_ms,
            "" if self.maxlen is None else self.maxlen,
        ]
        entries = [self.entry(msg, target) for target in targets]
        keys = [
            self.marker(msg),
            msg.stream,
            f"{self.state}:counts:{msg.stream}",
            *(t.stream for t in targets),
        ]
        assert self._script is not None, "on_startup was not called"
        if self._cluster:  # a step per target, in its slot (handlers._cluster)
            outcome = await _cluster.relay(self, targets, entries, keys, args)
        elif all(fits(len(fields) + 5) for fields in entries):  # key, MAXLEN ~ n, '*'
            for fields in entries:
                args.append(len(fields))
                args.extend(fields)
            outcome = await self._script(keys=keys, args=args)
        else:
            outcome = await self._forward_wide(targets, entries, keys, args[:4])
        self.counts[outcome.decode() if isinstance(outcome, bytes) else str(outcome)] += 1

    async def _forward_wide(
        self,
        targets: list[Target],
        entries: list[list[bytes | str]],
        keys: list[str],
        args: list[bytes | str | int],
    ) -> Any:
        """Forward an entry too wide for RELAY: plain XADDs and RELAY_WIDE in one MULTI."""
        trim: list[bytes | str | int] = [] if self.maxlen is None else ["MAXLEN", "~", self.maxlen]
        adds = [[t.stream, *trim, "*", *fields] for t, fields in zip(targets, entries, strict=True)]
        for fields in entries:
            args += [len(fields), *tail(fields)]
        assert self._redis is not None, "on_startup was not called"
        added, outcome = await add_then_check(self._redis, adds, self._wide_script, keys, args)
        for reply in (outcome, *added):
            if isinstance(reply, Exception):
                raise reply
        return outcome
