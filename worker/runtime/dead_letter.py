"""The dead-letter format, and the scripts that write a dead letter and ack its entry.

A dead letter is the original entry's fields exactly as Redis stores them (same order,
repeated names kept, fields that happen to start with `dlq_` kept), followed by metadata
fields: `dlq_stream`, `dlq_group`, `dlq_consumer`, `dlq_attempts`, `dlq_handler`,
`dlq_error_type`, `dlq_error`, `dlq_traceback` (handler failures only), `dlq_failed_at`,
`dlq_id`, and last `dlq_fields`: how many field pairs at the start are the original ones. So
the split never depends on names. Dead letters written before `dlq_fields` existed have no
such last field; readers then take every field not prefixed `dlq_` as original.

The original fields are read server-side (XRANGE inside the script), not from the dict
redis-py parsed, which keeps only the last value of a repeated name. The script first checks
that the entry is still pending on this consumer: an entry a peer took over, or one already
acked (a resend after a lost reply), is left alone and reported as not owned.

`worker.admin.deadletters` reads this format back; both sides take the names from here.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from worker.message import Message
from worker.wide import DROP_NEWEST, LUA_ITEMS, add_then_check, read_fields, tail

DEAD_LETTER_PREFIX = "dlq_"
"""Prefix of the metadata fields a dead letter carries after the original fields."""

FIELDS_MARKER = DEAD_LETTER_PREFIX + "fields"
"""The last field of a dead letter: the number of original field pairs placed first."""

ERROR_LIMIT = 4000
"""Characters of the error message kept in a dead letter."""

TRACEBACK_LIMIT = 4000
"""Characters of the handler's traceback kept in a dead letter (the last ones)."""

WRITTEN, NOT_OWNED, TOO_WIDE = b"written", b"not_owned", b"too_wide"
"""What the scripts report: the dead letter exists; the entry is not pending on this
consumer (nothing written); the entry is too wide for a script (nothing written)."""

DEAD_LETTER = """
-- KEYS[1] dead-letter stream, KEYS[2] source stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer, ARGV[4] most items one XADD may take,
-- ARGV[5] m = number of metadata items, ARGV[6 .. 5+m] metadata (field, value, ...),
-- ARGV[6+m ..] the fields as parsed by the client, used only if the entry was deleted.
-- Both keys must live on one server (Redis Cluster: one hash slot).
-- Returns {status, dead-letter id}. XADD comes before XACK: if it fails, the script stops
-- and the entry stays pending.
local owner = redis.call('XPENDING', KEYS[2], ARGV[1], ARGV[2], ARGV[2], 1)[1]
if not owner or owner[2] ~= ARGV[3] then
  return {'not_owned'}
end
local m = tonumber(ARGV[5])
local args = {KEYS[1], '*'}
local found = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2])[1]
if found then
  for i = 1, #found[2] do
    args[#args + 1] = found[2][i]
  end
else
  for i = 6 + m, #ARGV do
    args[#args + 1] = ARGV[i]
  end
end
local originals = (#args - 2) / 2
if #args + m + 2 > tonumber(ARGV[4]) then
  return {'too_wide'}
end
for i = 6, 5 + m do
  args[#args + 1] = ARGV[i]
end
args[#args + 1] = 'dlq_fields'
args[#args + 1] = string.format('%d', originals)
local dead_id = redis.call('XADD', unpack(args))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return {'written', dead_id}
"""

SETTLE_WIDE = (
    DROP_NEWEST
    + """
-- KEYS[1] dead-letter stream, KEYS[2] source stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer, ARGV[4] items of the dead letter,
-- ARGV[5..8] its last items. Runs in MULTI right after the XADD of a wide dead letter:
-- acks the entry if it is still ours, else deletes the dead letter just added.
local owner = redis.call('XPENDING', KEYS[2], ARGV[1], ARGV[2], ARGV[2], 1)[1]
if owner and owner[2] == ARGV[3] then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return 'written'
end
drop_newest(KEYS[1], tonumber(ARGV[4]), 5)
return 'not_owned'
"""
)


@dataclass(slots=True)
class DeadLetter:
    """One entry on its way to the dead-letter stream, with why it failed."""

    msg: Message
    error_type: str
    error: str
    handler: str
    traceback: str | None = None
    """The end of the formatted traceback of the handler's failure, if one raised."""


def describe(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of an exception, for logs and dead letters."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError", "handler timed out"
    return type(exc).__name__, str(exc) or repr(exc)


def traceback_of(exc: BaseException) -> str | None:
    """The last TRACEBACK_LIMIT characters of `exc`'s traceback; None if it was never raised.

    Formatting costs tens of microseconds, so it is done only for failures."""
    if exc.__traceback__ is None:
        return None
    return "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]


def metadata(letter: DeadLetter, group: str, consumer: str) -> list[bytes | str]:
    """The metadata items of a dead letter, flattened, without the final `dlq_fields`."""
    msg = letter.msg
    meta = {
        "stream": msg.stream,
        "group": group,
        "consumer": consumer,
        "attempts": str(msg.attempt),
        "handler": letter.handler,
        "error_type": letter.error_type,
        "error": letter.error[:ERROR_LIMIT],
    }
    if letter.traceback is not None:
        meta["traceback"] = letter.traceback
    meta["failed_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    meta["id"] = msg.id  # last before dlq_fields: the wide path recognises its entry by it
    flat: list[bytes | str] = []
    for key, value in meta.items():
        flat += (DEAD_LETTER_PREFIX + key, value)
    return flat


def script_args(letter: DeadLetter, group: str, consumer: str) -> list[bytes | str | int]:
    """ARGV of DEAD_LETTER."""
    meta = metadata(letter, group, consumer)
    args: list[bytes | str | int] = [group, letter.msg.id, consumer, LUA_ITEMS, len(meta), *meta]
    for name, value in letter.msg.raw.items():
        args += (name, value)
    return args


def wide_dead_letter(fields: Sequence[bytes], meta: Sequence[bytes | str]) -> list[bytes | str]:
    """The items of a dead letter written without a script: fields, metadata, `dlq_fields`."""
    return [*fields, *meta, FIELDS_MARKER, str(len(fields) // 2)]


async def write_wide(
    redis: Redis, settle_wide: Any, dlq: str, letter: DeadLetter, group: str, consumer: str
) -> Any:
    """Write a dead letter of more fields than DEAD_LETTER can pass on: XADD, then in the
    same MULTI the SETTLE_WIDE script (`settle_wide`), which acks the entry if it is still
    ours or deletes the copy. Returns what DEAD_LETTER would: [status, id], or an error."""
    msg = letter.msg
    fields = await read_fields(redis, msg.stream, msg.id)
    if fields is None:  # deleted meanwhile: the parsed fields are all that is left
        fields = [item for pair in msg.raw.items() for item in pair]
    items = wide_dead_letter(fields, metadata(letter, group, consumer))
    (added,), status = await add_then_check(
        redis,
        [[dlq, "*", *items]],
        settle_wide,
        keys=[dlq, msg.stream],
        args=[group, msg.id, consumer, len(items), *tail(items)],
    )
    for reply in (added, status):
        if isinstance(reply, Exception):
            return reply
    return [status, added]


def split(flat: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """A dead letter's items as (original items, metadata items), both flat.

    The last field `dlq_fields` says how many pairs are original; without it (dead letters
    written before it existed) every pair not prefixed `dlq_` is original.
    """
    marker = FIELDS_MARKER.encode()
    if len(flat) >= 2 and flat[-2] == marker and flat[-1].isdigit():
        count = 2 * int(flat[-1])
        if count <= len(flat) - 2:
            return list(flat[:count]), list(flat[count:-2])
    prefix = DEAD_LETTER_PREFIX.encode()
    original: list[bytes] = []
    meta: list[bytes] = []
    for i in range(0, len(flat) - 1, 2):
        (meta if flat[i].startswith(prefix) else original).extend(flat[i : i + 2])
    return original, meta
