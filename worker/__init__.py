"""syncworker: a durable Redis Streams worker runtime.

The public API: write handlers with `@handler` (or subclass `Handler`), raise `Retry` or
`Reject` to steer what happens to a message, and run them with `Worker`.
"""

from worker.errors import (
    ConfigError,
    DuplicateHandlerName,
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
from worker.publish import Publisher, event_fields, publish
from worker.runtime.stats import Stats
from worker.runtime.worker import Worker
from worker.settings import Route, WorkerSettings, load_settings

__all__ = [
    "ConfigError",
    "DuplicateHandlerName",
    "FunctionHandler",
    "Handler",
    "HandlerContext",
    "HandlerFunc",
    "HandlerNotFound",
    "InvalidEvent",
    "MalformedMessage",
    "Message",
    "NotReplicated",
    "Publisher",
    "Reject",
    "Retry",
    "Route",
    "Stats",
    "SyncWorkerError",
    "Worker",
    "WorkerSettings",
    "event_fields",
    "handler",
    "load_settings",
    "publish",
]
