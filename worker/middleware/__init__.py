"""Middleware: functions wrapped around handler calls, composed once per route.

The shape is watermill's handler middleware: a middleware takes the next handler function and
returns a new one, so it can act before and after the call, change what the call raised, or
not call it at all. Plain functions keep middleware easy to write and to test:

```python
def timed(next: HandlerFunc) -> HandlerFunc:
    async def call(msg: Message) -> None:
        started = time.perf_counter()
        try:
            await next(msg)
        finally:
            HANDLER_SECONDS.observe(time.perf_counter() - started)
    return call
```

Each route's chain is built once, when the worker builds its routes, never per call: a route
without middleware calls its handler exactly as it would without this module. The order, first
listed outermost:

1. the worker's own (`Worker(..., middleware=[...])`, after `SYNCWORKER_TRACING` and
   `SYNCWORKER_MIDDLEWARE`), which see every call, including those of events that do not
   validate;
2. typed-event validation, for a handler with a `model` (`worker.middleware.typed`);
3. the route's own (`@handler(middleware=[...])`, a `middleware` attribute on a `Handler`
   subclass, then `middleware = [...]` on the route in the config file), which see
   `msg.event`.

A worker-wide middleware object may also have a `skipped(msg)` method: it is called for each
entry that no handler of its stream wants (acknowledged untouched), as tracing does to record
those deliveries too. And it may have a `batch(next)` method, the same shape for batch handler
calls (`BatchCall`): batch handlers bypass the per-message chain (one call for many messages),
so this is how a worker-wide concern such as tracing sees their calls. Like the chains, it is
composed once per route, and a worker without such middleware calls batch handlers as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from worker.errors import ConfigError
from worker.handler import HandlerFunc
from worker.message import Message
from worker.registry import import_string

if TYPE_CHECKING:
    from worker.batch import Outcome
    from worker.runtime.policy import RetryPolicy
    from worker.settings import WorkerSettings

Middleware = Callable[[HandlerFunc], HandlerFunc]
"""Takes the next handler function of the chain and returns the one to call instead."""

Skipped = Callable[[Message], None]
"""Called with an entry no handler wants, before it is acknowledged untouched."""

BatchCall = Callable[[list[Message]], Awaitable[list["Outcome"]]]
"""Runs a batch handler on a batch (all of one stream and one route) and returns one outcome
per message, in order, each None or an exception instance; raises what the call raised (a
result of the wrong shape raises `BatchResultError`)."""

BatchWrap = Callable[[BatchCall], BatchCall]
"""A worker-wide middleware's `batch` method: takes the next batch call, returns the one to
make instead."""

__all__ = [
    "BatchCall",
    "BatchWrap",
    "Middleware",
    "Skipped",
    "batch_hooks",
    "chain",
    "load",
    "skip_hooks",
    "worker_middleware",
]


def chain(handle: HandlerFunc, middleware: Sequence[Middleware]) -> HandlerFunc:
    """`handle` wrapped in `middleware`, the first listed outermost; `handle` itself when the
    list is empty, so that a route without middleware pays nothing."""
    for wrap in reversed(middleware):
        handle = wrap(handle)
    return handle


def load(references: Iterable[Any], setting: str) -> list[Middleware]:
    """Middleware from import strings (`package.module:attr`) or the objects themselves.

    Raises:
        ConfigError: a reference does not import, or names something that is not callable.
    """
    loaded: list[Middleware] = []
    for reference in references:
        obj = reference
        if isinstance(reference, str):
            try:
                obj = import_string(reference)
            except ImportError as exc:
                raise ConfigError(
                    setting, f"cannot import middleware {reference!r}: {exc}"
                ) from None
        if not callable(obj):
            raise ConfigError(setting, f"middleware {reference!r} is not callable")
        loaded.append(obj)
    return loaded


def worker_middleware(
    settings: WorkerSettings, policy: RetryPolicy, given: Iterable[Any] = ()
) -> list[Middleware]:
    """The worker-wide chain: tracing (`SYNCWORKER_TRACING`), then `SYNCWORKER_MIDDLEWARE`,
    then those passed to `Worker`.

    Raises:
        ConfigError: a middleware does not load, or tracing is on without the `otel` extra.
    """
    chain_: list[Middleware] = []
    if settings.tracing:
        try:
            from worker.middleware.tracing import Tracing
        except ImportError as exc:
            raise ConfigError(
                "SYNCWORKER_TRACING",
                f"tracing needs OpenTelemetry: pip install 'syncworker[otel]' ({exc})",
            ) from None
        chain_.append(Tracing(policy))
    chain_ += load(settings.middleware, "SYNCWORKER_MIDDLEWARE")
    chain_ += load(given, "middleware")
    return chain_


def skip_hooks(middleware: Iterable[Middleware]) -> tuple[Skipped, ...]:
    """The `skipped` methods of the worker-wide middleware that have one."""
    hooks: list[Skipped] = []
    for m in middleware:
        hook = getattr(m, "skipped", None)
        if callable(hook):
            hooks.append(hook)
    return tuple(hooks)


def batch_hooks(middleware: Iterable[Middleware]) -> tuple[BatchWrap, ...]:
    """The `batch` methods of the worker-wide middleware that have one, outermost first."""
    hooks: list[BatchWrap] = []
    for m in middleware:
        hook = getattr(m, "batch", None)
        if callable(hook):
            hooks.append(hook)
    return tuple(hooks)
