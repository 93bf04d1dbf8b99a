"""The routes' event contracts as an AsyncAPI 3.0 document, built as a plain dict.

The same contracts as `worker.contracts`, in the form AsyncAPI tools (documentation
generators, code generators for producers) read: a channel per stream (its address is the
stream's name), a message per event type, and one `receive` operation per stream. Payloads are
the handlers' models as pydantic writes them, in AsyncAPI's default schema format (a superset
of JSON Schema draft 07); the models they refer to sit under `components.schemas`, where
AsyncAPI documents keep them. A type several handlers type gets `allOf` of their schemas; a
`Versions` model contributes its newest version (`syncworker schema` without `--asyncapi` lists
every version).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from worker.contracts import ANY_TYPE
from worker.handler import Handler
from worker.typed import adapter
from worker.versions import as_versions

ASYNCAPI_VERSION = "3.0.0"
REF_TEMPLATE = "#/components/schemas/{model}"
_NOT_ID = re.compile(r"[^\w.\-]")


def asyncapi(handlers: Iterable[Handler]) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of what `handlers` receive."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    payloads: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for h in handlers:
        versions = as_versions(h.model)
        model = versions.models[versions.latest] if versions is not None else h.model
        for stream in h.streams:
            for event_type in sorted(h.types) if h.types is not None else [ANY_TYPE]:
                found = payloads.setdefault((stream, event_type), [])
                if model is not None:
                    found.append(_payload(model, schemas))
    for (stream, event_type), found in sorted(payloads.items()):
        channel_id = identifier(stream)
        channel = channels.setdefault(channel_id, {"address": stream, "messages": {}})
        message_id = "any" if event_type == ANY_TYPE else identifier(event_type)
        message: dict[str, Any] = {"name": event_type, "contentType": "application/json"}
        if event_type == ANY_TYPE:
            message["summary"] = "every entry of the stream"
        if found:
            message["payload"] = found[0] if len(found) == 1 else {"allOf": found}
        channel["messages"][message_id] = message
        operation = operations.setdefault(
            f"receive-{channel_id}",
            {"action": "receive", "channel": {"$ref": f"#/channels/{channel_id}"}, "messages": []},
        )
        operation["messages"].append({"$ref": f"#/channels/{channel_id}/messages/{message_id}"})
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": "syncworker event contracts", "version": _version()},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
    }
    if schemas:
        document["components"] = {"schemas": dict(sorted(schemas.items()))}
    return document


def identifier(name: str) -> str:
    """`name` as an AsyncAPI map key (`^[\\w\\d.\\-_]+$`): other characters become `_`."""
    return _NOT_ID.sub("_", name) or "_"


def _payload(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = dict(adapter(model).json_schema(ref_template=REF_TEMPLATE))
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    return schema


def _version() -> str:
    try:
        return version("syncworker")
    except PackageNotFoundError:  # a source tree without an install
        return "0"
