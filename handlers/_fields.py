"""Option parsing and value encoding shared by the built-in plugins."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from worker import MalformedMessage, Message

FieldMap = dict[str, str]
"""target name -> source field of the event's `data` object."""


def field_map(option: str, value: Sequence[str] | Mapping[str, str] | None) -> FieldMap | None:
    """A `fields` option: a list copies fields by name, a table renames (target = source).

    Raises:
        ValueError: the option is neither, or names an empty field.
    """
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"{option} must be a list of field names or a table, not a string")
    if isinstance(value, Mapping):
        mapping = {str(k): str(v) for k, v in value.items()}
    else:
        mapping = {str(name): str(name) for name in value}
    if any(not k or not v for k, v in mapping.items()):
        raise ValueError(f"{option} names an empty field")
    return mapping


def data_object(msg: Message) -> dict[str, Any]:
    """The event's `data` as a JSON object; an absent `data` is an empty object.

    Raises:
        MalformedMessage: `data` is not JSON, or not an object.
    """
    data = msg.data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MalformedMessage(f"data is a JSON {type(data).__name__}, not an object")
    return data


def pick(data: Mapping[str, Any], fields: FieldMap | None) -> dict[str, Any]:
    """The selected fields of `data` (all when `fields` is None); absent ones are left out."""
    if fields is None:
        return dict(data)
    return {target: data[source] for target, source in fields.items() if source in data}


def encode(value: Any) -> str:
    """A hash field value: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def entity_key(msg: Message, key_field: str | None) -> str:
    """The entity an event is about: `data[key_field]` when configured, else the `key` field.

    Raises:
        MalformedMessage: the event names no entity.
    """
    if key_field is not None:
        value = data_object(msg).get(key_field)
        if value is None or value == "":
            raise MalformedMessage(f"data has no {key_field!r} to use as the entity key")
        return value if isinstance(value, str) else encode(value)
    if not msg.key:
        raise MalformedMessage("event has no key field naming its entity")
    return msg.key


def milliseconds(option: str, seconds: float) -> int:
    """A positive duration option in whole milliseconds, for PX arguments.

    Raises:
        ValueError: not positive.
    """
    if seconds <= 0:
        raise ValueError(f"{option} must be a positive number of seconds")
    return max(int(seconds * 1000), 1)
