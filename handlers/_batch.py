"""What the batch paths of the built-in plugins share: grouping, chunking, outcome texts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from redis.exceptions import ResponseError

from worker import Message

SCRIPT_ITEMS = 50_000
"""Most arguments one script call of a batch carries. Redis runs a script to its end before
anything else, so a bound keeps each call short; a single wider event still goes alone."""

SCRIPT_EVENTS = 500
"""Most events one script call of a batch applies."""


def by_stream(msgs: Sequence[Message]) -> dict[str, list[int]]:
    """Indices of `msgs` per stream, in order: each script acknowledges on one stream."""
    groups: dict[str, list[int]] = {}
    for i, msg in enumerate(msgs):
        groups.setdefault(msg.stream, []).append(i)
    return groups


def chunks(sizes: Sequence[int]) -> Iterator[slice]:
    """Consecutive slices of items of `sizes` arguments each, within SCRIPT_ITEMS and
    SCRIPT_EVENTS per slice (an item wider than the bound forms a slice of its own)."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (total + size > SCRIPT_ITEMS or i - start >= SCRIPT_EVENTS):
            yield slice(start, i)
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield slice(start, len(sizes))


def failure(reply: bytes | str) -> ResponseError:
    """A script's per-event error text as the error a single-event script would have raised."""
    return ResponseError(reply.decode() if isinstance(reply, bytes) else reply)


def text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


UNPACK_ITEMS = """
-- The items `pack` joined into one string: each is its length in decimal, ':', its bytes.
local function unpack_items(packed)
  local items, pos, size = {}, 1, #packed
  while pos <= size do
    local colon = string.find(packed, ':', pos, true)
    local length = tonumber(string.sub(packed, pos, colon - 1))
    items[#items + 1] = string.sub(packed, colon + 1, colon + length)
    pos = colon + length + 1
  end
  return items
end
"""


def pack(items: Iterable[bytes | str | int]) -> bytes:
    """Many script arguments as one (read back by UNPACK_ITEMS' `unpack_items`).

    redis-py encodes and frames every argument of a command in Python; for a batch of
    events that is most of the client's work. Joined here in one pass, they cost a fraction.
    """
    # Comprehensions with exact class checks: twice as fast as a loop with isinstance.
    raw: list[Any] = [
        item.encode() if item.__class__ is str else b"%d" % item if item.__class__ is int else item
        for item in items
    ]
    return b"".join([b"%d:%s" % (len(r), r) for r in raw])
