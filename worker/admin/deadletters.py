"""Reading, replaying and purging dead letters.

A dead letter is the original entry's exact fields followed by metadata fields prefixed `dlq_`
(see `worker.runtime.dead_letter`). Replaying writes the original fields back to the original
stream, followed by `replay_of_stream` and `replay_of_id` (the entry it copies; kept as they
are when the dead letter is itself a replay), so that the handlers' deduplication recognises
a replay of an entry whose effect has landed. A replay for one consumer group (`group`) also
carries `replay_for_group`, last: the runtime of every other group acks it without running a
handler (`worker.runtime.dispatch`). The removal from the dead-letter stream happens
in the same atomic step as the write (one Lua script, or for entries too wide for Lua one
MULTI/EXEC): a crash can neither lose a dead letter nor leave it in both places, and two
operators replaying at once replay it once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker import topology
from worker.connection import text
from worker.message import REPLAY_FOR_GROUP, REPLAY_OF_ID, REPLAY_OF_STREAM
from worker.runtime.dead_letter import DEAD_LETTER_PREFIX, FIELDS_MARKER, split
from worker.wide import DROP_NEWEST, LUA_ITEMS, add_then_check, read_fields, read_range, tail

REPLAY = """
-- KEYS[1] dead-letter stream, KEYS[2] stream to write to
-- ARGV[1] dead-letter entry id, ARGV[2] metadata field prefix, ARGV[3] the `dlq_fields` name,
-- ARGV[4] most items one XADD may take, ARGV[5] and ARGV[6] the names of the fields that
-- say which entry a replay copies (replay_of_stream, replay_of_id).
-- Returns {'replayed', new id}, {'missing'} when the dead letter no longer exists, or
-- {'too_wide'} (nothing written) when the entry has too many fields for a script.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not found then
  return {'missing'}
end
local fields = found[2]
local args = {KEYS[2], '*'}
local n = #fields
local count = nil
if n >= 2 and fields[n - 1] == ARGV[3] then
  count = tonumber(fields[n])
end
local stream, id = nil, nil
local replayed = false
for i = 1, n - 1, 2 do
  local name = fields[i]
  local original
  if count and count * 2 <= n - 2 then
    original = i <= count * 2
  else
    original = string.sub(name, 1, #ARGV[2]) ~= ARGV[2]
  end
  if original then
    args[#args + 1] = name
    args[#args + 1] = fields[i + 1]
    if name == ARGV[5] then
      replayed = true
    end
  elseif name == ARGV[2] .. 'stream' then
    stream = fields[i + 1]
  elseif name == ARGV[2] .. 'id' then
    id = fields[i + 1]
  end
end
if #args == 2 then
  return redis.error_reply('dead letter ' .. ARGV[1] .. ' has no original fields')
end
if stream and id and not replayed then
  args[#args + 1] = ARGV[5]
  args[#args + 1] = stream
  args[#args + 1] = ARGV[6]
  args[#args + 1] = id
end
if ARGV[8] ~= '' then
  args[#args + 1] = ARGV[7]
  args[#args + 1] = ARGV[8]
end
if #args > tonumber(ARGV[4]) then
  return {'too_wide'}
end
local new_id = redis.call('XADD', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return {'replayed', new_id}
"""

REPLAY_WIDE = (
    DROP_NEWEST
    + """
-- KEYS[1] dead-letter stream, KEYS[2] stream written to
-- ARGV[1] dead-letter entry id, ARGV[2] items of the entry just added, ARGV[3..6] its last
-- items. Runs in MULTI right after the XADD of a wide replay: removes the dead letter, or,
-- if another replay removed it first, the entry just added.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  return 'replayed'
end
drop_newest(KEYS[2], tonumber(ARGV[2]), 3)
return 'missing'
"""
)

PAGE = 200
"""Dead letters read (or replayed) per round trip."""

MAX_SEQ = 2**64 - 1


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One entry of a dead-letter stream, split into the original fields and the metadata."""

    id: str
    pairs: list[tuple[bytes, bytes]]
    """The original entry's fields, exactly as they were: in order, repeated names kept."""
    meta: dict[str, str]
    """stream, id, group, consumer, attempts, handler, error_type, error, traceback,
    failed_at (without the `dlq_` prefix); bytes that are not UTF-8 decoded with
    `surrogateescape`, so the exact bytes stay recoverable."""

    @classmethod
    def parse(cls, entry_id: Any, flat: Sequence[bytes]) -> DeadLetterEntry:
        original, metadata = split(flat)
        prefix = len(DEAD_LETTER_PREFIX)
        meta = {
            _decode(metadata[i][prefix:]): _decode(metadata[i + 1])
            for i in range(0, len(metadata) - 1, 2)
            if metadata[i] != FIELDS_MARKER.encode()
        }
        pairs = list(zip(original[::2], original[1::2], strict=True))
        return cls(text(entry_id), pairs, meta)

    @property
    def fields(self) -> dict[bytes, bytes]:
        """The original fields as a dict: a repeated name keeps its last value."""
        return dict(self.pairs)

    def decoded_fields(self) -> dict[str, str]:
        """The original fields as text (`surrogateescape`: never fails on bytes that are not
        UTF-8); a repeated name keeps its last value."""
        return {_decode(k): _decode(v) for k, v in self.pairs}


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


async def read(
    redis: Redis, dead_letter_stream: str, start: str = "-", end: str = "+", count: int = PAGE
) -> list[DeadLetterEntry]:
    """Up to `count` dead letters from `start` to `end` (inclusive), oldest first."""
    entries = await read_range(redis, dead_letter_stream, start, end, count)
    return [DeadLetterEntry.parse(entry_id, flat) for entry_id, flat in entries]


async def pages(
    redis: Redis, dead_letter_stream: str, end: str, page: int = PAGE
) -> AsyncIterator[list[DeadLetterEntry]]:
    """Every dead letter up to `end`, a page at a time.

    Stopping at an `end` taken before the first page keeps a replay from chasing its own
    tail: a replayed message that fails again lands behind `end` and is not replayed twice.
    """
    start = "-"
    while True:
        batch = await read(redis, dead_letter_stream, start, end, page)
        if batch:
            yield batch
        if len(batch) < page:
            return
        start = "(" + batch[-1].id


async def last_id(redis: Redis, dead_letter_stream: str) -> str | None:
    """The id of the newest dead letter, or None when there is none."""
    newest = await redis.xrevrange(dead_letter_stream, "+", "-", count=1)
    return text(newest[0][0]) if newest else None


async def replay(
    redis: Redis, dead_letter_stream: str, stream: str, ids: list[str], group: str | None = None
) -> list[str | None]:
    """Write each dead letter's original fields back to `stream` and remove it, atomically.

    With `group`, the new entry carries `replay_for_group`: only that group runs it.

    Returns:
        For each id, the id of the new entry in `stream`, or None if no such dead letter.
    """
    script = redis.register_script(REPLAY)
    pipe = topology.batch(redis, (script,))
    for dead_id in ids:
        await script(
            keys=[dead_letter_stream, stream],
            args=[
                dead_id,
                DEAD_LETTER_PREFIX,
                FIELDS_MARKER,
                LUA_ITEMS,
                REPLAY_OF_STREAM,
                REPLAY_OF_ID,
                REPLAY_FOR_GROUP,
                group or "",
            ],
            client=pipe,
        )
    results = await pipe.execute(raise_on_error=True)
    replayed: list[str | None] = []
    for dead_id, (status, *new_id) in zip(ids, results, strict=True):
        if status == b"too_wide":
            replayed.append(await _replay_wide(redis, dead_letter_stream, stream, dead_id, group))
        else:
            replayed.append(text(new_id[0]) if status == b"replayed" else None)
    return replayed


async def _replay_wide(
    redis: Redis, dead_letter_stream: str, stream: str, dead_id: str, group: str | None
) -> str | None:
    """Replay one dead letter too wide for Lua: XADD, then in the same MULTI remove the dead
    letter, or the new entry if another replay got there first."""
    flat = await read_fields(redis, dead_letter_stream, dead_id)
    if flat is None:
        return None
    items = replayed_fields(flat, group)
    (added,), status = await add_then_check(
        redis,
        [[stream, "*", *items]],
        redis.register_script(REPLAY_WIDE),
        keys=[dead_letter_stream, stream],
        args=[dead_id, len(items), *tail(items)],
    )
    for reply in (added, status):
        if isinstance(reply, Exception):
            raise reply
    return text(added) if status == b"replayed" else None


def replayed_fields(flat: Sequence[bytes], group: str | None = None) -> list[bytes | str]:
    """The items a replay of this dead letter writes (what REPLAY computes in Lua)."""
    original, metadata = split(flat)
    meta = dict(zip(metadata[::2], metadata[1::2], strict=True))
    items: list[bytes | str] = list(original)
    stream = meta.get((DEAD_LETTER_PREFIX + "stream").encode())
    entry_id = meta.get((DEAD_LETTER_PREFIX + "id").encode())
    if stream and entry_id and REPLAY_OF_STREAM.encode() not in original[::2]:
        items += (REPLAY_OF_STREAM, stream, REPLAY_OF_ID, entry_id)
    if group:
        items += (REPLAY_FOR_GROUP, group)
    return items


async def purge(redis: Redis, dead_letter_stream: str, ids: list[str]) -> list[bool]:
    """Delete these dead letters; for each id, whether it existed."""
    pipe = redis.pipeline(transaction=False)
    for dead_id in ids:
        pipe.xdel(dead_letter_stream, dead_id)
    return [bool(n) for n in await pipe.execute()]


async def purge_through(redis: Redis, dead_letter_stream: str, end: str) -> int:
    """Delete every dead letter up to and including `end`; returns how many.

    XTRIM MINID keeps the stream key (and any consumer group reading the dead letters),
    unlike DEL, and leaves alone what was dead-lettered after `end` was read.
    """
    removed: int = await redis.xtrim(dead_letter_stream, minid=next_id(end), approximate=False)
    return removed


def next_id(entry_id: str) -> str:
    """The smallest entry id greater than `entry_id`."""
    ms, _, seq = entry_id.partition("-")
    sequence = int(seq or 0)
    if sequence == MAX_SEQ:
        return f"{int(ms) + 1}-0"
    return f"{int(ms)}-{sequence + 1}"
