"""syncworker: a durable Redis Streams worker runtime.

The public API: write handlers with `@handler` (or subclass `Handler`), raise `Retry` or
`Reject` to steer what happens to a message, and run them with `Worker`.
"""

from worker.batch import BatchFunctionHandler, BatchHandler, Outcome
from worker.errors import (
    ConfigError,
    DuplicateHandlerName,
    EffectNotReplicated,
    HandlerNotFound,
    InvalidEvent,
    MalformedMessage,
    NotReplicated,
    Reject,
    Retry,
    SyncWorkerError,
)
from worker.handler import FunctionHandler, Handler, HandlerContext, HandlerFunc, handler
from worker.message import Message
from worker.middleware import Middleware
from worker.publish import Publisher, event_fields, publish
from worker.runtime.stats import Stats
from worker.runtime.worker import Worker
from worker.settings import Route, WorkerSettings, load_settings
from worker.versions import Versions

__all__ = [
    "BatchFunctionHandler",
    "BatchHandler",
    "ConfigError",
    "DuplicateHandlerName",
    "EffectNotReplicated",
    "FunctionHandler",
    "Handler",
    "HandlerContext",
    "HandlerFunc",
    "HandlerNotFound",
    "InvalidEvent",
    "MalformedMessage",
    "Message",
    "Middleware",
    "NotReplicated",
    "Outcome",
    "Publisher",
    "Reject",
    "Retry",
    "Route",
    "Stats",
    "SyncWorkerError",
    "Versions",
    "Worker",
    "WorkerSettings",
    "event_fields",
    "handler",
    "load_settings",
    "publish",
]
