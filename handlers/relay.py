"""Relay: forwards events to other streams, transformed, with exactly one downstream entry each.

For example `order.completed` on `orders` becomes `payment.requested` on `payments`. A relay
fans out to one or more target streams; each target may filter types, rename them and pick
fields of `data`, and may be a partitioned stream (`partitions = N`: each entry goes to the
partition of its key, `worker.partitions`). Downstream entries keep the source's fields
(`key`, `version`, `event_id`, ...) and gain `source_stream` and `source_id`, so consumers
can trace them back. With tracing on (`worker.tracing`), a per-message relay (`batch =
false`) writes its own span's context instead of the source's `traceparent`, so its
consumers' spans are children of the relay's span; a batch relay carries each source entry's
own context on unchanged (its call's span, with tracing on, covers many traces and only links
to them), so downstream consumers stay in the trace of each event's origin.

Exactly once. A redelivered message (the worker crashed after writing, a consumer was taken
over while its handler still ran), or a replayed dead letter of it, must not produce a second
entry. The script checks a marker `<state>:seen:<group>:<stream>:<id>` (for a replay, the
stream and id of the entry it copies: `Message.origin`) with a TTL (`dedup_ttl`, one day by
default), and writes nothing if it exists. The marker, every XADD, an outcome counter
(`<state>:counts:<stream>`) and, with `ack = true`, the XACK happen in one Lua script, so a
crash leaves either all of them or none. `Relay(...)` is a batch handler unless
`batch=False`: one script call then forwards a whole batch in order (up to 500 events per
call), each event checked against its own marker, and acknowledges those it settled; an event
that fails (a target that is not a stream) writes nothing and alone is retried. The TTL
bounds memory; it must outlast the time an
entry can stay pending, which one day does by orders of magnitude.

Entries of more fields than a script can pass to XADD (about 4,000; Lua's `unpack` limit) go
another way, with the same outcome: one plain XADD per target inside MULTI/EXEC, followed in
the same transaction by a script that keeps them, sets the marker and acks, or, for a
duplicate or a target that is not a stream, deletes the entries just added (see
`worker.wide`).

On a Redis Cluster the relay runs one such step per target (for a batch, one script call per
target stream with every event bound there), in the target's slot, with the
marker and counters kept beside the target (`{<target>}<state>:seen:...`,
`{<target>}<state>:counts:<stream>`); the XACK stays in the step when there is one target in
the source's slot, else it follows the steps (`handlers._cluster`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from handlers import _cluster
from handlers._batch import UNPACK_ITEMS, chunks, failure, pack, text
from handlers._fields import FieldMap, data_object, field_map, milliseconds, pick
from handlers._wait import check_wait, note_wait
from worker import HandlerContext, MalformedMessage, Message
from worker.batch import BatchHandler, Outcome
from worker.errors import EffectNotReplicated
from worker.handler import Handler
from worker.message import REPLAY_FOR_GROUP, REPLAY_OF_ID, REPLAY_OF_STREAM
from worker.partitions import check_partitioned_name, stream_for
from worker.topology import is_cluster
from worker.wide import DROP_NEWEST, add_then_check, fits, tail

RELAY = (
    UNPACK_ITEMS
    + """
-- Forwards a batch of events in order, each exactly once, and acknowledges them.
-- KEYS[1] source stream, KEYS[2] counts hash, KEYS[3..] dedup markers and target streams.
-- ARGV[1] group, ARGV[2] '1' to XACK, ARGV[3] marker TTL ms, ARGV[4] MAXLEN ('' for none),
-- ARGV[5] number of events, ARGV[6] number of entry ids to acknowledge only (filtered out),
-- those ids, then the events packed in one argument (`handlers._batch.pack`), per event:
-- entry id, index in KEYS of its marker, number of targets, and per target: index in KEYS
-- of the stream, n, followed by n field/value items.
-- Returns one reply per event: 'forwarded', 'duplicate', or an error text. An event that
-- fails writes nothing and is not acknowledged; the others are. Redis does not roll a
-- script back when a command fails half-way: an event's targets are checked before its
-- first XADD, and its marker is written after its last one.
local kinds = {}
local function kind(key)
  if not kinds[key] then
    kinds[key] = redis.call('TYPE', key).ok
  end
  return kinds[key]
end
local trim = {}
if ARGV[4] ~= '' then
  trim = {'MAXLEN', '~', ARGV[4]}
end
local A
-- The outcome of the event whose marker index is at A[pos + 1]; and where the next starts.
local function forward(pos)
  local targets, next_pos = {}, pos + 3
  for t = 1, tonumber(A[pos + 2]) do
    local n = tonumber(A[next_pos + 1])
    targets[t] = {KEYS[tonumber(A[next_pos])], next_pos + 2, n}
    next_pos = next_pos + 2 + n
  end
  for _, target in ipairs(targets) do
    local k = kind(target[1])
    if k ~= 'stream' and k ~= 'none' then
      return 'WRONGTYPE ' .. target[1] .. ' holds a ' .. k .. ', not a stream', next_pos
    end
  end
  local marker = KEYS[tonumber(A[pos + 1])]
  if redis.call('EXISTS', marker) == 1 then
    return 'duplicate', next_pos
  end
  for _, target in ipairs(targets) do
    local args = {target[1], unpack(trim)}
    args[#args + 1] = '*'
    for i = target[2], target[2] + target[3] - 1 do
      args[#args + 1] = A[i]
    end
    redis.call('XADD', unpack(args))
    kinds[target[1]] = 'stream'
  end
  redis.call('SET', marker, '1', 'PX', ARGV[3])
  return 'forwarded', next_pos
end
local acks, replies, tally = {}, {}, {}
local skip = tonumber(ARGV[6])
for i = 7, 6 + skip do
  acks[#acks + 1] = ARGV[i]
end
A = unpack_items(ARGV[7 + skip])
local pos = 1
for e = 1, tonumber(ARGV[5]) do
  local outcome, next_pos = forward(pos)
  replies[e] = outcome
  if outcome == 'forwarded' or outcome == 'duplicate' then
    tally[outcome] = (tally[outcome] or 0) + 1
    acks[#acks + 1] = A[pos]
  end
  pos = next_pos
end
for outcome, count in pairs(tally) do
  redis.call('HINCRBY', KEYS[2], outcome, count)
end
if ARGV[2] == '1' then
  for i = 1, #acks, 7000 do
    redis.call('XACK', KEYS[1], ARGV[1], unpack(acks, i, math.min(i + 6999, #acks)))
  end
end
return replies
"""
)

RELAY_WIDE = (
    DROP_NEWEST
    + """
-- KEYS[1] dedup marker, KEYS[2] source stream, KEYS[3] counts hash, KEYS[4..] targets.
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' to XACK, ARGV[4] marker TTL ms,
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


_TRACE_FIELDS = frozenset((b"traceparent", b"tracestate", b"baggage"))
"""The W3C trace-context fields, replaced by the relay's own when it is traced."""
_NOT_COPIED_TRACED = _NOT_COPIED | _TRACE_FIELDS


def _trace_fields() -> dict[str, str] | None:
    """The current trace context as fields, when the process traces; None otherwise (then
    OpenTelemetry is never loaded, and the source's fields are copied as they are)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from worker.tracing import current_fields

    return current_fields() or None


@dataclass(frozen=True, slots=True)
class Target:
    """One downstream stream, with its own filter and transformation."""

    stream: str
    types: frozenset[str] | None
    rename: dict[str, str]
    fields: FieldMap | None
    partitions: int = 0
    """N: `stream` is a logical stream of N partitions, and each entry goes to the partition
    of its key (`worker.partitions`); 0: `stream` is the stream written to."""

    def stream_for(self, msg: Message) -> str:
        return stream_for(self.stream, msg.key, self.partitions)

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
    unknown = set(spec) - {"stream", "types", "rename", "fields", "partitions"}
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {sorted(unknown)} (stream, types, rename, fields, partitions)"
        )
    stream = str(spec.get("stream") or "")
    if not stream:
        raise ValueError(f"{where}: stream must not be empty")
    partitions = int(spec.get("partitions") or 0)
    if partitions:
        try:
            check_partitioned_name(stream, partitions)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return Target(
        stream=stream,
        types=frozenset(spec["types"]) if "types" in spec else types,
        rename={**rename, **dict(spec.get("rename", {}))},
        fields=field_map(f"{where}.fields", spec["fields"]) if "fields" in spec else fields,
        partitions=partitions,
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
        wait_replicas: on a Redis Cluster, when a target lives in another slot than the
            source stream, acknowledge an event only once this many replicas hold its
            entry on each target (WAIT after each target's script, on its connection); see
            `handlers._cluster`. Elsewhere the entries and the ack replicate together and
            nothing is waited for.
        wait_timeout: seconds to wait for them; an event they do not confirm in time is not
            acknowledged and runs again (`worker.EffectNotReplicated`).
        batch: True (the default) builds a batch handler, which writes up to `batch_max`
            messages in one round trip but must be alone on its stream; False handles one
            message at a time and may share the stream (with `ack = false`).
        batch_max: most messages per batch.
        batch_wait: seconds a batch may wait for more messages (see `worker.batch`).

    Raises:
        ValueError: invalid options.
    """

    name = "relay"

    def __new__(cls, *args: Any, batch: bool = True, **options: Any) -> Relay:
        # `copy.copy` (Handler.bind) calls __new__ without options: it keeps the class.
        if batch and options and cls is Relay:
            cls = BatchRelay
        return super().__new__(cls)

    def __init__(
        self,
        *,
        batch: bool = True,
        batch_max: int = 100,
        batch_wait: float = 0.002,
        to: str | Sequence[str | Mapping[str, Any]],
        types: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        fields: Sequence[str] | Mapping[str, str] | None = None,
        maxlen: int | None = None,
        state_prefix: str = "syncworker:relay",
        ack: bool = True,
        dedup_ttl: float = 86400.0,
        dedup: str = "id",
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if batch_wait < 0:
            raise ValueError("batch_wait must be >= 0 seconds")
        self.batch_max = batch_max
        self.batch_wait = batch_wait
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
        self.wait_replicas, self.wait_timeout = check_wait(wait_replicas, wait_timeout)
        self._unconfirmed: dict[str, float] = {}  # primary -> when WAIT last fell short
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
        note_wait(self, self._cluster)

    def entry(
        self, msg: Message, target: Target, trace: Mapping[str, str] | None = None
    ) -> list[bytes | str]:
        """The fields of the downstream entry for `target`, flattened name, value, ...

        `trace`: the current trace context's fields, which replace the source's.
        """
        flat: list[bytes | str] = []
        event_type = msg.type
        skip = _NOT_COPIED_TRACED if trace else _NOT_COPIED
        for name, value in msg.raw.items():
            if name in skip:
                continue
            flat += (name, value)
        if trace:
            for field_name, text in trace.items():
                flat += (field_name, text)
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
        """One message as a batch of one, carrying the current span's context (the per-message
        relay's own span, with tracing on); raises its outcome unless it succeeded."""
        (outcome,) = await self._relay([msg], _trace_fields())
        if outcome is not None:
            raise outcome

    async def handle_batch(self, msgs: list[Message]) -> list[Outcome]:
        """Forward `msgs` in order: one script call per chunk of events, and an entry too
        wide for a script on its own (see the module docstring).

        Each entry carries its source's trace context on unchanged, even while a batch span
        is current: that span covers many traces, and the entry belongs to its origin's.

        Returns:
            Per message: None (forwarded or a duplicate, and acknowledged with `ack`), or the
            error that keeps it from being forwarded (retried; `MalformedMessage`:
            dead-lettered).
        """
        return await self._relay(msgs, None)

    async def _relay(self, msgs: list[Message], trace: Mapping[str, str] | None) -> list[Outcome]:
        """`handle_batch`, with `trace`: the fields that replace each source's context."""
        outcomes: list[Outcome] = [None] * len(msgs)
        planned: list[tuple[int, list[Target], list[list[bytes | str]]]] = []
        filtered: list[str] = []
        for i, msg in enumerate(msgs):
            targets = [t for t in self.targets if t.wants(msg.type)]
            if not targets:
                self.counts["filtered"] += 1
                filtered.append(msg.id)
                continue
            try:
                entries = [self.entry(msg, target, trace) for target in targets]
            except MalformedMessage as exc:
                outcomes[i] = exc
                continue
            if all(fits(len(fields) + 5) for fields in entries):  # key, MAXLEN ~ n, '*'
                planned.append((i, targets, entries))
                continue
            # Events keep their order: those before the wide one go first.
            await self._forward(msgs, planned, filtered, outcomes)
            planned, filtered = [], []
            try:
                outcome = await self._forward_wide(msg, targets, entries)
            except Exception as exc:  # this event's failure, not its neighbours'
                outcomes[i] = exc
            else:
                self.counts[text(outcome)] += 1
        await self._forward(msgs, planned, filtered, outcomes)
        return outcomes

    async def _forward(
        self,
        msgs: Sequence[Message],
        planned: Sequence[tuple[int, list[Target], list[list[bytes | str]]]],
        filtered: Sequence[str],
        outcomes: list[Outcome],
    ) -> None:
        """Run RELAY over `planned` (chunked), acknowledging `filtered` with the first call."""
        if not planned and not filtered:
            return
        stream, group = msgs[0].stream, msgs[0].group
        if self._cluster:  # a call per target stream, in its slot: handlers._cluster
            for i, outcome in await _cluster.relay(self, msgs, planned, filtered):
                if isinstance(outcome, EffectNotReplicated):  # not acked: runs again
                    outcomes[i] = outcome
                    continue
                if outcome in ("forwarded", "duplicate"):
                    self.counts[outcome] += 1
                else:
                    outcomes[i] = failure(outcome)
            return
        sizes = [sum(len(fields) + 2 for fields in entries) + 3 for _, _, entries in planned]
        for part in chunks(sizes) if planned else [slice(0, 0)]:
            keys: dict[str, int] = {stream: 1, f"{self.state}:counts:{stream}": 2}
            args: list[bytes | str | int] = [
                group,
                "1" if self.acks_atomically else "0",
                self.dedup_ms,
                "" if self.maxlen is None else self.maxlen,
                part.stop - part.start,
                len(filtered),
                *filtered,
            ]
            filtered = []  # acknowledged by the first call
            events: list[bytes | str | int] = []
            for i, targets, entries in planned[part]:
                marker = keys.setdefault(self.marker(msgs[i]), len(keys) + 1)
                events += (msgs[i].id, marker, len(targets))
                for target, fields in zip(targets, entries, strict=True):
                    events += (
                        keys.setdefault(target.stream_for(msgs[i]), len(keys) + 1),
                        len(fields),
                    )
                    events += fields
            args.append(pack(events))
            assert self._script is not None, "on_startup was not called"
            replies = await self._script(keys=list(keys), args=args)
            for (i, _, _), reply in zip(planned[part], replies, strict=True):
                outcome = text(reply)
                if outcome in ("forwarded", "duplicate"):
                    self.counts[outcome] += 1
                else:
                    outcomes[i] = failure(outcome)

    async def _forward_wide(
        self, msg: Message, targets: list[Target], entries: list[list[bytes | str]]
    ) -> Any:
        """Forward an entry too wide for RELAY: plain XADDs and RELAY_WIDE in one MULTI."""
        keys = [
            self.marker(msg),
            msg.stream,
            f"{self.state}:counts:{msg.stream}",
            *(t.stream_for(msg) for t in targets),
        ]
        args: list[bytes | str | int] = [
            msg.group,
            msg.id,
            "1" if self.acks_atomically else "0",
            self.dedup_ms,
        ]
        trim: list[bytes | str | int] = [] if self.maxlen is None else ["MAXLEN", "~", self.maxlen]
        adds = [
            [t.stream_for(msg), *trim, "*", *fields]
            for t, fields in zip(targets, entries, strict=True)
        ]
        for fields in entries:
            args += [len(fields), *tail(fields)]
        assert self._redis is not None, "on_startup was not called"
        added, outcome = await add_then_check(self._redis, adds, self._wide_script, keys, args)
        for reply in (outcome, *added):
            if isinstance(reply, Exception):
                raise reply
        return outcome


class BatchRelay(Relay, BatchHandler):
    """`Relay` as a batch handler (what `Relay(...)` builds unless `batch=False`): the
    runtime hands it up to `batch_max` messages of its stream at a time, which it writes in
    one round trip. It must be the only handler of its stream."""
