"""The dead-letter format, and the script that writes a dead letter and acks its entry.

A dead letter is the original entry's fields followed by metadata fields prefixed `dlq_`
(`dlq_stream`, `dlq_id`, `dlq_group`, `dlq_consumer`, `dlq_attempts`, `dlq_handler`,
`dlq_error_type`, `dlq_error`, `dlq_failed_at`). `worker.admin.deadletters` reads this format
back; both sides take the prefix from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from worker.message import Message

DEAD_LETTER_PREFIX = "dlq_"
"""Prefix of the metadata fields a dead letter carries beside the original fields."""

ERROR_LIMIT = 4000
"""Characters of the error message kept in a dead letter."""

DEAD_LETTER = """
-- KEYS[1] dead-letter stream, KEYS[2] source stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3..] field/value pairs for the dead letter.
-- Both keys must live on one server (Redis Cluster: one hash slot).
-- XADD first: if it fails the script stops and the entry stays pending; the ack follows
-- only a dead letter that exists.
local dead_id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return dead_id
"""


@dataclass(slots=True)
class DeadLetter:
    """One entry on its way to the dead-letter stream, with why it failed."""

    msg: Message
    error_type: str
    error: str
    handler: str


def describe(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of an exception, for logs and dead letters."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError", "handler timed out"
    return type(exc).__name__, str(exc) or repr(exc)


def dead_letter_fields(letter: DeadLetter, group: str, consumer: str) -> list[bytes | str]:
    """The dead letter's fields, flattened for XADD: the original ones, then the metadata."""
    msg = letter.msg
    flat: list[bytes | str] = []
    for name, value in msg.raw.items():
        flat.append(name)
        flat.append(value)
    metadata = {
        "stream": msg.stream,
        "id": msg.id,
        "group": group,
        "consumer": consumer,
        "attempts": str(msg.attempt),
        "handler": letter.handler,
        "error_type": letter.error_type,
        "error": letter.error[:ERROR_LIMIT],
        "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    for key, meta in metadata.items():
        flat.append(DEAD_LETTER_PREFIX + key)
        flat.append(meta)
    return flat
