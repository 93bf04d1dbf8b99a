"""What an envelope yields (`Opened`) and the `Message` that presents it (`EnvelopeMessage`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import MalformedMessage
from worker.message import Message, decode_json


@dataclass(frozen=True, slots=True)
class Opened:
    """An event read from an envelope: the conventional parts and every other attribute.

    Attributes:
        type: the event type, or None.
        key: the entity key (ordering key), or None.
        data: the payload, decoded as its content type says (JSON, text or bytes).
        event_id: the publisher's id of the event, or None.
        version: the entity version, or None.
        attributes: the envelope's other attributes or headers (CloudEvents `source`, `time`,
            extensions; FastStream headers), as the envelope carries them.
        skip: the entry carries no event (a Debezium tombstone): the runtime acknowledges it
            untouched, counted as `skipped`, and runs no handler.
    """

    type: str | None
    key: str | None = None
    data: Any = None
    event_id: str | None = None
    version: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    skip: bool = False


class EnvelopeMessage(Message):
    """A `Message` whose conventional properties come from an envelope, not from fields.

    `raw` and `fields` stay the entry's own fields, exactly as stored, so dead letters and
    relays copy the entry unchanged.
    """

    __slots__ = ("envelope", "opened")

    def __init__(self, msg: Message, envelope: str, opened: Opened) -> None:
        super().__init__(msg.stream, msg.id, msg.raw, msg.attempt, msg.group)
        self.size = msg.size
        self.envelope = envelope
        """The envelope the entry was read in (`cloudevents`, `faststream`, `dapr`, `debezium`)."""
        self.opened = opened
        self.lane_key = None if opened.key is None else opened.key.encode()

    @property
    def type(self) -> str | None:
        """The event type the envelope carries, or None."""
        return self.opened.type

    @property
    def key(self) -> str | None:
        """The entity key the envelope carries, or None."""
        return self.opened.key

    @property
    def event_id(self) -> str | None:
        """The publisher's event id the envelope carries, or None."""
        return self.opened.event_id

    @property
    def version(self) -> int | None:
        """The entity version the envelope carries, or None."""
        return self.opened.version

    @property
    def schema_version(self) -> int | None:
        """The payload's schema version: the CloudEvents extension `schemaversion`, or a
        `schema_version` header (FastStream); None when absent.

        Raises:
            MalformedMessage: it is not an integer.
        """
        attributes = self.opened.attributes
        value = attributes.get("schemaversion", attributes.get("schema_version"))
        return version_of(value)

    @property
    def data(self) -> Any:
        """The payload, decoded when the envelope was opened."""
        return self.opened.data

    @property
    def attributes(self) -> dict[str, Any]:
        """The envelope's other attributes or headers."""
        return self.opened.attributes


def text(value: bytes | str) -> str:
    """`value` as text; undecodable bytes become U+FFFD, as in `Message.fields`."""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def json_payload(value: bytes | str, what: str) -> Any:
    """`value` decoded as JSON.

    Raises:
        MalformedMessage: not valid JSON, or nested deeper than the interpreter allows.
    """
    try:
        return decode_json(value)
    except ValueError as exc:
        raise MalformedMessage(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedMessage(
            f"{what} is nested too deeply to decode (limit {sys.getrecursionlimit()})"
        ) from None


def payload(value: bytes | None, content_type: str | None, what: str) -> Any:
    """A payload decoded as its content type says: JSON (also when no type is given), text
    for `text/*`, bytes for anything else."""
    if value is None:
        return None
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return json_payload(value, what)
    if media.startswith("text/"):
        return text(value)
    return value


def version_of(value: Any) -> int | None:
    """An envelope's version attribute as an integer, or None when absent.

    Raises:
        MalformedMessage: present but not an integer.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedMessage(f"version is not an integer: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise MalformedMessage(f"version is not an integer: {value!r}") from None


def optional_text(attributes: Mapping[str, Any], name: str) -> str | None:
    """A string attribute, or None; other JSON values are rendered as JSON would."""
    value = attributes.get(name)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
