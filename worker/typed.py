"""Typed events: validate a message's `data` against the model its handler declares.

The check runs as a middleware (`worker.middleware.typed`), composed once when the runtime
builds its routes, so handlers without a model run exactly as before. The parsed value reaches
the handler as `msg.event`, for plain functions and `Handler` subclasses alike.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

from worker.errors import InvalidEvent
from worker.message import Message
from worker.runtime.stats import Stats
from worker.versions import Versions, parse_versioned

log = structlog.get_logger("worker.typed")

MAX_ERRORS = 20
"""Validation errors listed in a dead letter's error text; the rest are counted."""


@lru_cache(maxsize=256)
def adapter(model: Any) -> TypeAdapter[Any]:
    """The (cached) pydantic adapter of `model`: a BaseModel, dataclass, TypedDict, ..."""
    return TypeAdapter(model)


def describe(model: Any, exc: ValidationError) -> str:
    """`exc` as one line: each error's field path and message, e.g. `amount: Input should be
    a valid number`."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors]
    more = f"; and {len(parts) - MAX_ERRORS} more" if len(parts) > MAX_ERRORS else ""
    name = getattr(model, "__name__", repr(model))
    return f"data does not match {name}: {'; '.join(parts[:MAX_ERRORS])}{more}"


def validate(model: Any, payload: Any) -> Any:
    """`payload` validated against `model`.

    Raises:
        ValidationError: it does not validate.
    """
    return adapter(model).validate_python(payload)


def parse(model: Any, msg: Message, stats: Stats) -> Any:
    """`msg.data` validated against `model`; with `Versions`, against the model of the
    entry's schema version, then upcast to the newest (`worker.versions`).

    Raises:
        InvalidEvent: it does not validate (counted and logged as `event.invalid`).
        MalformedMessage: `data` (or the schema version) cannot be decoded at all.
    """
    try:
        if isinstance(model, Versions):
            return parse_versioned(model, msg.schema_version, msg.data, validate, describe)
        return validate(model, msg.data)
    except ValidationError as exc:
        reason = describe(model, exc)
    except InvalidEvent as exc:
        reason = str(exc)
    stats.invalid_events[msg.stream] += 1
    log.warning("event.invalid", stream=msg.stream, message_id=msg.id, error=reason)
    raise InvalidEvent(reason)
