"""Finding handler plugins: entry points of `syncworker.handlers`, or `module:attr` strings."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from worker.batch import BatchHandler
from worker.errors import ConfigError, DuplicateHandlerName, HandlerNotFound
from worker.handler import ENVELOPES, Handler
from worker.settings import Route, WorkerSettings

ENTRY_POINT_GROUP = "syncworker.handlers"


def import_string(path: str) -> Any:
    """Import `package.module:attr` (arq's `import_string`, with a colon).

    Raises:
        ImportError: the module or the attribute does not exist.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ImportError(f"{path!r} is not of the form module:attr")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def load_plugin(reference: str, setting: str) -> Any:
    """Resolve an entry-point name or a `module:attr` string to the object it names.

    Raises:
        HandlerNotFound: nothing by that name; the message names `setting`.
    """
    if ":" in reference:
        try:
            return import_string(reference)
        except ImportError as exc:
            raise HandlerNotFound(setting, f"cannot import {reference!r}: {exc}") from None
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == reference]
    if not found:
        known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
        raise HandlerNotFound(
            setting,
            f"no handler named {reference!r} (entry points of {ENTRY_POINT_GROUP}: "
            f"{', '.join(known) or 'none installed'}; or use module:attr)",
        )
    try:
        return found[0].load()
    except Exception as exc:  # a broken plugin is a configuration problem, not a crash
        raise HandlerNotFound(setting, f"entry point {reference!r} failed to load: {exc}") from None


def handlers_from_settings(settings: WorkerSettings) -> list[Handler]:
    """Every handler the settings ask for, bound to its streams, validated together.

    Raises:
        ConfigError: an unknown handler, a factory without a route, no streams at all, a
            duplicate name, or an atomically-acking handler sharing its stream.
    """
    bound: list[Handler] = []
    for reference in settings.handlers:
        obj = load_plugin(reference, "SYNCWORKER_HANDLERS")
        if not isinstance(obj, Handler):
            raise ConfigError(
                "SYNCWORKER_HANDLERS",
                f"{reference!r} is a {type(obj).__name__}, not a handler; factories need a "
                "route with a stream in the config file ([[routes]])",
            )
        if not obj.streams:
            raise ConfigError("SYNCWORKER_HANDLERS", f"{reference!r} is not routed to a stream")
        bound.append(obj)
    for index, route in enumerate(settings.routes):
        bound.append(_bind_route(route, f"routes[{index}]"))
    validate(bound)
    return bound


def _bind_route(route: Route, setting: str) -> Handler:
    obj = load_plugin(route.handler, f"{setting}.handler")
    if isinstance(obj, Handler):
        if route.options:
            raise ConfigError(
                f"{setting}.options", f"{route.handler!r} is a ready handler and takes no options"
            )
        instance = obj
    elif callable(obj):
        try:
            instance = obj(**route.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{setting}.options", f"{route.handler!r}: {exc}") from None
        if not isinstance(instance, Handler):
            raise ConfigError(f"{setting}.handler", f"{route.handler!r} did not build a Handler")
    else:
        raise ConfigError(f"{setting}.handler", f"{route.handler!r} is not a handler or factory")
    try:
        bound = instance.bind(
            [route.stream],
            route.types,
            route.envelope,
            partitions=route.partitions,
            ordered=route.ordered,
        )
    except ValueError as exc:
        raise ConfigError(f"{setting}.stream", str(exc)) from None
    if bound.ordered and not bound.partitions:
        raise ConfigError(f"{setting}.ordered", "ordered needs partitions")
    if route.middleware:
        from worker.middleware import load  # imported late: worker.middleware imports this module

        bound.middleware = (*bound.middleware, *load(route.middleware, f"{setting}.middleware"))
    if route.model is not None:
        try:
            bound.model = import_string(route.model)
        except ImportError as exc:
            raise ConfigError(f"{setting}.model", f"cannot import {route.model!r}: {exc}") from None
    if route.name:
        bound.name = route.name
    elif not bound.name:
        bound.name = route.handler
    return bound


def validate(handlers: Iterable[Handler]) -> None:
    """Refuse handler sets that cannot run correctly together.

    Raises:
        ConfigError: see `handlers_from_settings`; or handlers on one stream that read it in
            different envelopes.
    """
    handlers = list(handlers)
    if not handlers:
        raise ConfigError("SYNCWORKER_HANDLERS", "no handlers configured, so no streams are routed")
    seen: dict[tuple[str, str], Handler] = {}
    per_stream: dict[str, list[Handler]] = {}
    for h in handlers:
        if h.envelope not in ENVELOPES:
            raise ConfigError(
                "routes",
                f"handler {h.name!r} names envelope {h.envelope!r}; one of {', '.join(ENVELOPES)}",
            )
        for stream in h.streams:
            if (stream, h.name) in seen:
                raise DuplicateHandlerName(
                    "SYNCWORKER_HANDLERS", f"handler {h.name!r} is routed to {stream!r} twice"
                )
            seen[(stream, h.name)] = h
            per_stream.setdefault(stream, []).append(h)
    for stream, group in per_stream.items():
        envelopes = {h.envelope for h in group}
        if len(envelopes) > 1:
            raise ConfigError(
                "routes",
                f"handlers on {stream!r} read it in different envelopes "
                f"({', '.join(f'{h.name}: {h.envelope}' for h in group)}); an entry has one "
                "layout, so every handler of a stream must name the same envelope",
            )
        batching = [h.name for h in group if isinstance(h, BatchHandler)]
        if batching and len(group) > 1:
            raise ConfigError(
                "routes",
                f"{batching[0]!r} is a batch handler and must be the only handler on "
                f"{stream!r} (also routed there: {', '.join(h.name for h in group)}); "
                "route the other handlers to a stream of their own",
            )
        strict_batches = [h.name for h in group if h.ordered == "strict" and batching]
        if strict_batches:
            raise ConfigError(
                "routes",
                f"{strict_batches[0]!r} is a batch handler on the strict-order stream "
                f"{stream!r}: strict order holds a key back one message at a time; set "
                "batch = false for this route, or ordered = true",
            )
        modes = {h.ordered for h in group}
        if len(modes) > 1:
            raise ConfigError(
                "routes",
                f"handlers on {stream!r} disagree on ordered "
                f"({', '.join(f'{h.name}: {h.ordered}' for h in group)}); a partition is "
                "either leased to one worker or read by all",
            )
        atomic = [h.name for h in group if h.acks_atomically]
        if atomic and len(group) > 1:
            raise ConfigError(
                "routes",
                f"{atomic[0]!r} acknowledges atomically and must be the only handler on "
                f"{stream!r} (also routed there: {', '.join(h.name for h in group)})",
            )
