"""Typed-event validation as a middleware: `data` is validated against the handler's `model`
before the call, and the parsed value reaches the handler as `msg.event`.

The runtime puts it in the chain of every route whose handler declares a `model`, after the
worker-wide middleware and before the route's own (see `worker.middleware`). An event that does
not validate raises `InvalidEvent`, which dead-letters it with each error's field path (no
retry can change the payload). For blocking handlers it runs in the event loop, before the
thread is taken.
"""

from __future__ import annotations

from typing import Any

from worker.handler import HandlerFunc
from worker.message import Message
from worker.middleware import Middleware
from worker.runtime.stats import Stats
from worker.typed import parse
from worker.versions import as_versions


def validate(model: Any, stats: Stats) -> Middleware:
    """The middleware that validates `data` against `model` (counted in `stats` when it
    does not validate).

    Args:
        model: anything pydantic can validate: a `BaseModel`, a dataclass, a `TypedDict`, ...;
            or a `Versions` (or dict of version to model) for versioned payloads.
        stats: where invalid events are counted (`syncworker_invalid_events_total`).
    """
    model = as_versions(model) or model

    def middleware(next: HandlerFunc) -> HandlerFunc:
        async def call(msg: Message) -> None:
            msg._event = parse(model, msg, stats)
            await next(msg)

        return call

    return middleware
