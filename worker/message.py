"""Message: one stream entry as a handler sees it, decoded lazily.

Decoding is lazy because most of a message is never looked at by most handlers (a relay copies
raw fields, a projection reads `data` once); decoding everything up front would cost the hot
path for nothing. Values that are not UTF-8 never raise here: `fields` replaces bad bytes and
`raw` keeps the exact bytes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from worker.errors import MalformedMessage

REPLAY_OF_STREAM = "replay_of_stream"
REPLAY_OF_ID = "replay_of_id"
"""Fields a replayed dead letter carries after its original fields: the stream and id of the
entry it copies (the first one, however often it was replayed), so that deduplication treats
a replay like a redelivery of that entry (`Message.origin`)."""

REPLAY_FOR_GROUP = "replay_for_group"
"""Field a dead letter replayed with `syncworker dlq replay --group G` carries last: only
consumer group G runs its handlers; every other group acks it untouched (outcome `skipped`).
Like the fields above, whoever can write to the stream can set it; producers must not."""

_REPLAY_OF_STREAM = REPLAY_OF_STREAM.encode()
_REPLAY_OF_ID = REPLAY_OF_ID.encode()
_MISSING: Any = object()
_raw_decode = json.JSONDecoder().raw_decode


def decode_json(value: bytes | str) -> Any:
    """`json.loads(value)`, with a fast path for the usual case.

    The usual case is compact UTF-8 JSON with nothing around it. `json.loads` on bytes first
    guesses the encoding in Python, then strips whitespace with two regular expressions, which
    costs more than the parse itself. The fast path decodes strictly as UTF-8 and scans one
    document from the first character; only when that document is the whole text is it the
    answer. Anything else (a BOM, surrounding whitespace, UTF-16, trailing garbage) goes to
    `json.loads` unchanged, so the two accept and reject exactly the same inputs.

    Raises:
        ValueError: not valid JSON (`json.JSONDecodeError`, or `UnicodeDecodeError`).
    """
    try:
        text = value.decode() if isinstance(value, bytes) else value
        result, end = _raw_decode(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return json.loads(value)
    if end != len(text):
        return json.loads(value)
    return result


class Message:
    """A stream entry delivered to a handler.

    Attributes:
        stream: the stream the entry was read from.
        id: the entry id (``<ms>-<seq>``).
        raw: the entry's fields exactly as stored, bytes to bytes.
        attempt: 1-based delivery count, taken from the group's pending list, so it survives
            restarts and takeovers by other consumers.
        group: the consumer group the message was delivered through.

    The conventional fields (`type`, `key`, `data`, `event_id`, `version`) are properties;
    entries that do not follow the convention still arrive, with those properties None.
    """

    # `_handler` (set by the dispatcher before each handler call) and `_log` stay unset until
    # used, so a message whose handler never logs costs nothing extra.
    __slots__ = (
        "_data",
        "_event",
        "_fields",
        "_handler",
        "_log",
        "attempt",
        "group",
        "id",
        "lane_key",
        "raw",
        "size",
        "stream",
    )
    _handler: str
    _event: Any
    _log: tuple[str, FilteringBoundLogger]

    def __init__(
        self,
        stream: str,
        id: str,
        raw: Mapping[bytes, bytes],
        attempt: int = 1,
        group: str = "",
    ) -> None:
        self.stream = stream
        self.id = id
        self.raw = raw
        self.attempt = attempt
        self.group = group
        self._fields: dict[str, str] | None = None
        self._data: Any = _MISSING
        self.size = 0
        """Bytes of the fields, set by the runtime's ledger when it holds the entry."""
        self.lane_key: bytes | None = raw.get(b"key")
        """What orders this message among others (`worker.runtime.lanes`): the `key` field,
        or the key of the envelope the entry was opened in (`worker.envelopes`)."""

    @property
    def fields(self) -> dict[str, str]:
        """All fields decoded as UTF-8; undecodable bytes become U+FFFD."""
        if self._fields is None:
            self._fields = {_text(k): _text(v) for k, v in self.raw.items()}
        return self._fields

    @property
    def type(self) -> str | None:
        """The event type (`type` field), or None."""
        return self._optional_text(b"type")

    @property
    def key(self) -> str | None:
        """The entity key (`key` field) that orders messages, or None."""
        return self._optional_text(b"key")

    @property
    def event_id(self) -> str | None:
        """The publisher's event id (`event_id` field), or None."""
        return self._optional_text(b"event_id")

    @property
    def version(self) -> int | None:
        """The entity version (`version` field) as an integer, or None.

        Raises:
            MalformedMessage: the field is present but not an integer.
        """
        value = self.raw.get(b"version")
        if value is None or value == b"":
            return None
        try:
            return int(value)
        except ValueError:
            raise MalformedMessage(f"version is not an integer: {_text(value)!r}") from None

    @property
    def schema_version(self) -> int | None:
        """The version of the payload's shape (`schema_version` field), or None; what
        `worker.versions.Versions` models choose by.

        Raises:
            MalformedMessage: the field is present but not an integer.
        """
        value = self.raw.get(b"schema_version")
        if value is None or value == b"":
            return None
        try:
            return int(value)
        except ValueError:
            raise MalformedMessage(f"schema_version is not an integer: {_text(value)!r}") from None

    @property
    def data(self) -> Any:
        """The `data` field decoded as JSON (None when absent); decoded on first use.

        Raises:
            MalformedMessage: the field is not valid UTF-8 JSON, or is nested too deeply to
                decode. Retrying cannot fix that, so the runtime dead-letters the message at once.
        """
        if self._data is _MISSING:
            value = self.raw.get(b"data")
            if value is None:
                self._data = None
            else:
                try:
                    self._data = decode_json(value)
                except ValueError as exc:
                    raise MalformedMessage(f"data is not valid JSON: {exc}") from None
                except RecursionError:
                    # The decoder recurses once per nesting level; `[` * 100000 hits the
                    # interpreter's limit. That is not a ValueError, and no retry can fix it.
                    raise MalformedMessage(
                        "data is nested too deeply to decode (deeper than the interpreter's "
                        f"recursion limit, {sys.getrecursionlimit()})"
                    ) from None
        return self._data

    @property
    def event(self) -> Any:
        """The payload parsed into the running handler's `model`.

        Set by the runtime before each call of a handler that declares a model (`@handler(...,
        model=OrderCompleted)`, or a `model` attribute on a `Handler` subclass), after `data`
        validated against it.

        Raises:
            AttributeError: the running handler declares no model.
        """
        try:
            return self._event
        except AttributeError:
            raise AttributeError(
                "msg.event is set only for handlers that declare a model (model=...)"
            ) from None

    @property
    def log(self) -> FilteringBoundLogger:
        """A logger bound to this message: stream, message_id, handler, attempt and group.

        Example:
            ```python
            msg.log.info("payment.synced", amount=msg.data["amount"])
            ```
        """
        handler: str = getattr(self, "_handler", "")
        cached: tuple[str, FilteringBoundLogger] | None = getattr(self, "_log", None)
        if cached is not None and cached[0] == handler:
            return cached[1]
        logger: FilteringBoundLogger = structlog.get_logger("handler").bind(
            stream=self.stream,
            message_id=self.id,
            handler=handler,
            attempt=self.attempt,
            group=self.group,
        )
        self._log = (handler, logger)
        return logger

    @property
    def origin(self) -> tuple[str, str]:
        """(stream, id) of the entry this message stands for: the one a replayed dead letter
        copies (its `replay_of_stream` and `replay_of_id` fields), else its own.

        Deduplication keys on this, so a replay of an entry whose effect has landed is a
        duplicate, as a redelivery of that entry would be. Whoever can write to the stream can
        set these fields; producers must not use them for anything else.
        """
        raw = self.raw
        stream = raw.get(_REPLAY_OF_STREAM)
        entry_id = raw.get(_REPLAY_OF_ID)
        if stream is None or entry_id is None:
            return self.stream, self.id
        return _text(stream), _text(entry_id)

    @property
    def timestamp_ms(self) -> int:
        """Milliseconds since the epoch at which Redis added the entry (from its id)."""
        return int(self.id.partition("-")[0])

    def _optional_text(self, name: bytes) -> str | None:
        value = self.raw.get(name)
        return None if value is None else _text(value)

    def __repr__(self) -> str:
        return f"Message(stream={self.stream!r}, id={self.id!r}, attempt={self.attempt})"


def _text(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")
