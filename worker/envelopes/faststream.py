"""FastStream's Redis stream encoding: one field, `__data__`, holding FastStream's own format.

FastStream 0.6+ writes `BinaryMessageFormatV1` by default (checked by publishing with
faststream 0.7.8): the 8-byte identity `\\x89BIN\\r\\n\\x1a\\n`, a big-endian u16 format
version (1), u32 offsets of the headers and of the body, a u16 header count, then each header
as a u16-length-prefixed key and value, and the body from its offset to the end. Earlier
releases (and `JSONMessageFormat`) write JSON: `{"data": "<body>", "headers": {...}}`.

Headers map to the message: `type`, `key` and `version` headers (FastStream has no such notion,
so publishers set them: `broker.publish(body, stream=..., headers={"type": "order.paid"})`),
`message_id` or else `correlation_id` (FastStream always sets one) -> `event_id`, and
`content-type` says how to decode the body (JSON for `application/json`, text for `text/*`,
bytes otherwise, and when absent, as FastStream publishes bytes).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from worker.envelopes.opened import Opened, optional_text, payload, version_of
from worker.errors import MalformedMessage

DATA_FIELD = b"__data__"
IDENTITY = b"\x89BIN\r\n\x1a\n"
_VERSION_1 = 1
_PREFIX = struct.Struct(">HII")  # format version, headers offset, body offset
_SHORT = struct.Struct(">H")


def open_faststream(raw: Mapping[bytes, bytes]) -> Opened:
    """Read an entry FastStream published.

    Raises:
        MalformedMessage: no `__data__` field, a binary message cut short, or a body its
            content type says is JSON but is not.
    """
    value = raw.get(DATA_FIELD)
    if value is None:
        raise MalformedMessage("not a FastStream message: no __data__ field")
    if value.startswith(IDENTITY):
        body, headers = _binary(value)
    else:
        body, headers = _json(value)
    return Opened(
        type=optional_text(headers, "type"),
        key=optional_text(headers, "key"),
        data=payload(body, _media(headers), "the FastStream body"),
        event_id=optional_text(headers, "message_id") or optional_text(headers, "correlation_id"),
        version=version_of(headers.get("version")),
        attributes=headers,
    )


def _media(headers: Mapping[str, Any]) -> str:
    # FastStream sets no content-type for a bytes body: that body stays bytes.
    return optional_text(headers, "content-type") or "application/octet-stream"


def _binary(value: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        version, headers_at, body_at = _PREFIX.unpack_from(value, len(IDENTITY))
        if version != _VERSION_1:
            raise MalformedMessage(f"not a FastStream message: binary format {version} is unknown")
        (count,) = _SHORT.unpack_from(value, headers_at)
        offset = headers_at + _SHORT.size
        headers: dict[str, Any] = {}
        for _ in range(count):
            name, offset = _string(value, offset)
            headers[name], offset = _string(value, offset)
    except (struct.error, UnicodeDecodeError) as exc:
        raise MalformedMessage(
            f"not a FastStream message: binary format is damaged: {exc}"
        ) from None
    if body_at > len(value):
        raise MalformedMessage("not a FastStream message: body offset beyond the end")
    return value[body_at:], headers


def _string(value: bytes, offset: int) -> tuple[str, int]:
    (length,) = _SHORT.unpack_from(value, offset)
    start = offset + _SHORT.size
    if start + length > len(value):
        raise struct.error("a header runs past the end")
    return value[start : start + length].decode(), start + length


def _json(value: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), str):
        raise MalformedMessage(
            "not a FastStream message: __data__ is neither its binary format nor "
            '{"data": ..., "headers": ...} JSON'
        )
    headers = parsed.get("headers") or {}
    if not isinstance(headers, dict):
        raise MalformedMessage("not a FastStream message: headers is not an object")
    return parsed["data"].encode(), headers
