"""Reading, replaying and purging dead letters.

A dead letter is the original entry's fields plus metadata fields prefixed `dlq_` (see
`worker.runtime.settle`). Replaying strips the metadata and appends the original fields to the
original stream, in one Lua script with the removal from the dead-letter stream: the entry is
removed only by the same atomic step that wrote it back, so a crash can neither lose it nor
leave it in both places, and two operators replaying at once replay it once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker.connection import text
from worker.runtime.dead_letter import DEAD_LETTER_PREFIX

REPLAY = """
-- KEYS[1] dead-letter stream, KEYS[2] stream to write to
-- ARGV[1] dead-letter entry id, ARGV[2] metadata field prefix
-- Returns the new entry id, or false when the dead letter no longer exists.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local prefix_length = #ARGV[2]
local original = {}
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, prefix_length) ~= ARGV[2] then
    original[#original + 1] = fields[i]
    original[#original + 1] = fields[i + 1]
  end
end
if #original == 0 then
  return redis.error_reply('dead letter ' .. ARGV[1] .. ' has no original fields')
end
local new_id = redis.call('XADD', KEYS[2], '*', unpack(original))
redis.call('XDEL', KEYS[1], ARGV[1])
return new_id
"""

PAGE = 200
"""Dead letters read (or replayed) per round trip."""

MAX_SEQ = 2**64 - 1


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One entry of a dead-letter stream, split into the original fields and the metadata."""

    id: str
    fields: dict[bytes, bytes]
    """The original entry's fields, exactly as they were."""
    meta: dict[str, str]
    """stream, id, group, consumer, attempts, handler, error_type, error, failed_at."""

    @classmethod
    def parse(cls, entry_id: Any, raw: dict[bytes, bytes]) -> DeadLetterEntry:
        prefix = DEAD_LETTER_PREFIX.encode()
        fields = {k: v for k, v in raw.items() if not k.startswith(prefix)}
        meta = {
            k[len(prefix) :].decode(): v.decode("utf-8", "replace")
            for k, v in raw.items()
            if k.startswith(prefix)
        }
        return cls(text(entry_id), fields, meta)

    def decoded_fields(self) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.fields.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "fields": self.decoded_fields(), "meta": self.meta}


async def read(
    redis: Redis, dead_letter_stream: str, start: str = "-", end: str = "+", count: int = PAGE
) -> list[DeadLetterEntry]:
    """Up to `count` dead letters from `start` to `end` (inclusive), oldest first."""
    entries: Any = await redis.xrange(dead_letter_stream, start, end, count=count)
    return [DeadLetterEntry.parse(entry_id, raw) for entry_id, raw in entries]


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
    redis: Redis, dead_letter_stream: str, stream: str, ids: list[str]
) -> list[str | None]:
    """Write each dead letter's original fields back to `stream` and remove it, atomically.

    Returns:
        For each id, the id of the new entry in `stream`, or None if no such dead letter.
    """
    script = redis.register_script(REPLAY)
    pipe = redis.pipeline(transaction=False)
    for dead_id in ids:
        await script(
            keys=[dead_letter_stream, stream], args=[dead_id, DEAD_LETTER_PREFIX], client=pipe
        )
    results = await pipe.execute(raise_on_error=True)
    return [None if r is None else text(r) for r in results]


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
