"""CloudEvents 1.0 in a stream entry, and Dapr's Redis Streams pub/sub (a CloudEvent in `data`).

Two content modes, as the CloudEvents Kafka binding defines them for key/value transports:

- structured: one field, `data`, holds the whole event in the JSON event format
  (`{"specversion": "1.0", "id": ..., "type": ..., "source": ..., "data": ...}`). This is the
  field Dapr's Redis pub/sub writes, so one convention reads both.
- binary: each attribute is a field of its own, prefixed `ce_` (`ce_specversion`, `ce_id`,
  `ce_type`, `ce_source`, `ce_subject`, extensions such as `ce_partitionkey`); the payload is
  the `data` field, its media type in `content-type` (or `ce_datacontenttype`).

An entry with a `ce_specversion` field is binary, anything else structured. The key is the
`partitionkey` extension (the CloudEvents partitioning extension) or else `subject`; the
event id is `id`; the version is a `version` extension, if any.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from worker.envelopes.opened import Opened, json_payload, optional_text, payload, text, version_of
from worker.errors import MalformedMessage

REQUIRED = ("id", "source", "type")
"""Attributes every CloudEvent has, besides `specversion`."""

_CE_PREFIX = b"ce_"
_SPECVERSION = b"ce_specversion"


def open_cloudevent(raw: Mapping[bytes, bytes]) -> Opened:
    """Read a CloudEvent in binary or structured mode.

    Raises:
        MalformedMessage: not a CloudEvent 1.0, or its data cannot be decoded.
    """
    if _SPECVERSION in raw:
        return _binary(raw)
    return _structured(raw, "not a CloudEvent")


def open_dapr(raw: Mapping[bytes, bytes]) -> Opened:
    """Read what Dapr's Redis pub/sub publishes: field `data` holding a CloudEvent as JSON.

    Raises:
        MalformedMessage: no `data` field, or it does not hold a CloudEvent (a raw payload
            published with `rawPayload=true` has no envelope to read: use `syncworker`).
    """
    return _structured(raw, "not a Dapr CloudEvent")


def _binary(raw: Mapping[bytes, bytes]) -> Opened:
    attributes = {
        text(name[len(_CE_PREFIX) :]): text(value)
        for name, value in raw.items()
        if name.startswith(_CE_PREFIX)
    }
    _check(attributes, "not a CloudEvent (binary mode)")
    content_type = raw.get(b"content-type")
    media = text(content_type) if content_type is not None else attributes.get("datacontenttype")
    data = payload(raw.get(b"data"), media, "the CloudEvent's data")
    return _opened(attributes, data)


def _structured(raw: Mapping[bytes, bytes], problem: str) -> Opened:
    value = raw.get(b"data")
    if value is None:
        raise MalformedMessage(
            f"{problem}: no data field (structured mode) and no ce_specversion (binary mode)"
        )
    event = json_payload(value, f"{problem}: the data field")
    if not isinstance(event, dict):
        raise MalformedMessage(
            f"{problem}: the data field holds {type(event).__name__}, not an object"
        )
    _check(event, problem)
    attributes = {k: v for k, v in event.items() if k not in ("data", "data_base64")}
    if "data_base64" in event:
        try:
            decoded = base64.b64decode(event["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise MalformedMessage(f"{problem}: data_base64 is not base64: {exc}") from None
        data = payload(decoded, optional_text(event, "datacontenttype"), "the CloudEvent's data")
    else:
        data = event.get("data")
    return _opened(attributes, data)


def _check(attributes: Mapping[str, Any], problem: str) -> None:
    version = attributes.get("specversion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise MalformedMessage(f"{problem}: specversion is {version!r}, not 1.x")
    missing = [name for name in REQUIRED if not attributes.get(name)]
    if missing:
        raise MalformedMessage(f"{problem}: missing required attribute(s) {', '.join(missing)}")


def _opened(attributes: dict[str, Any], data: Any) -> Opened:
    key = optional_text(attributes, "partitionkey") or optional_text(attributes, "subject")
    return Opened(
        type=optional_text(attributes, "type"),
        key=key,
        data=data,
        event_id=optional_text(attributes, "id"),
        version=version_of(attributes.get("version")),
        attributes=attributes,
    )
