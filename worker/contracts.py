"""Event contracts: the JSON Schema of each (stream, type) a handler declares a model for.

Producers in other languages validate against these before they publish, so that a payload
the worker would dead-letter (`InvalidEvent`) is refused where it is made. Each schema is a
self-contained resource with its own `$id`, so the `$ref`s pydantic writes (`#/$defs/...`)
resolve inside it however the document around it is laid out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.handler import Handler
from worker.typed import adapter
from worker.versions import as_versions

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ANY_TYPE = "*"
"""The type under which a handler that takes every type of its stream lists its model."""


def contracts(handlers: Iterable[Handler]) -> dict[str, Any]:
    """`{"streams": {stream: {"envelope": ..., "types": {type: schema}}}}` for `handlers`.

    A type no handler declares a model for gets the schema `{}` (anything); a type with
    several models gets `allOf` of them, as the payload must satisfy every one. Handlers
    with `Versions` models list the newest version's schema under `types`, and every
    version's under `versions` (`{type: {"1": schema, "2": schema}}`), so producers still on
    an older shape validate against theirs.
    """
    streams: dict[str, dict[str, Any]] = {}
    for h in handlers:
        versions = as_versions(h.model)
        for stream in h.streams:
            entry = streams.setdefault(stream, {"envelope": h.envelope, "types": {}})
            types: dict[str, list[dict[str, Any]]] = entry["types"]
            for event_type in sorted(h.types) if h.types is not None else [ANY_TYPE]:
                schemas = types.setdefault(event_type, [])
                if versions is None:
                    if h.model is not None:
                        schemas.append(_schema(h.model, stream, event_type, h.name))
                    continue
                schemas.append(
                    _schema(versions.models[versions.latest], stream, event_type, h.name)
                )
                by_version = entry.setdefault("versions", {}).setdefault(event_type, {})
                for number, model in versions.models.items():
                    name = f"{h.name}:v{number}"
                    by_version.setdefault(str(number), []).append(
                        _schema(model, stream, event_type, name)
                    )
    for entry in streams.values():
        entry["types"] = {t: _combine(s) for t, s in sorted(entry["types"].items())}
        if "versions" in entry:
            entry["versions"] = {
                t: {v: _combine(s) for v, s in sorted(by.items(), key=lambda i: int(i[0]))}
                for t, by in sorted(entry["versions"].items())
            }
    return {"$schema": DIALECT, "streams": dict(sorted(streams.items()))}


def _schema(model: Any, stream: str, event_type: str, name: str) -> dict[str, Any]:
    schema = adapter(model).json_schema()
    resource = f"urn:syncworker:{stream}:{event_type}:{name}"
    return {"$schema": DIALECT, "$id": resource, **schema}


def _combine(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    if not schemas:
        return {}
    if len(schemas) == 1:
        return schemas[0]
    return {"allOf": schemas}
