"""Test handlers without Redis: deliver a message the way the runtime would, see the outcome.

Example:
    ```python
    from worker.testing import deliver

    async def test_rejects_unknown_currency():
        result = await deliver(sync_payment, type="order.paid", data={"currency": "XYZ"})
        assert result.outcome == "dead_letter"

    async def test_batch_rejects_only_the_bad_one():
        results = await deliver_batch(sync_payments, [make_message(data=...), ...])
        assert [r.outcome for r in results] == ["ok", "dead_letter"]
    ```
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from worker.batch import BatchHandler
from worker.connection import refused_for_now
from worker.errors import Retry
from worker.handler import Handler
from worker.message import Message
from worker.middleware import Middleware, load
from worker.runtime.backoff import Backoff
from worker.runtime.batch_dispatch import BatchDispatcher
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.policy import RetryPolicy
from worker.runtime.stats import Stats

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

Outcome = Literal["ok", "retry", "dead_letter", "skipped"]

_sequence = itertools.count()


@dataclass
class Delivery:
    """What the runtime would do with one delivery.

    Attributes:
        outcome: ok (acked), retry (left pending), dead_letter, or skipped (no handler wants
            the type; acked untouched).
        error: the exception the handler raised, if any.
        retry_delay: the delay a `Retry(delay=...)` asked for, if any.
        message: the message that was delivered.
    """

    outcome: Outcome
    message: Message
    error: BaseException | None = None
    retry_delay: float | None = None


@dataclass
class _Recorder:
    policy: RetryPolicy
    results: list[Delivery] = field(default_factory=list)

    def ack(self, msg: Message, handler: str, *, skipped: bool = False) -> None:
        self.results.append(Delivery("skipped" if skipped else "ok", msg))

    def failed(self, msg: Message, exc: BaseException, handler: str) -> None:
        if refused_for_now(exc):  # an outage: the runtime runs it again on the same attempt
            self.results.append(Delivery("retry", msg, exc))
            return
        if self.policy.spent(msg.attempt):
            self.results.append(Delivery("dead_letter", msg, exc))
            return
        delay = exc.delay if isinstance(exc, Retry) else None
        self.results.append(Delivery("retry", msg, exc, delay))

    def dead_letter(
        self, msg: Message, exc: BaseException, handler: str, *, reason: str = "rejected"
    ) -> None:
        self.results.append(Delivery("dead_letter", msg, exc))


def make_message(
    stream: str = "test",
    *,
    type: str | None = None,
    key: str | None = None,
    data: Any = None,
    version: int | None = None,
    event_id: str | None = None,
    schema_version: int | None = None,
    fields: dict[str, str | bytes] | None = None,
    attempt: int = 1,
    group: str = "test",
) -> Message:
    """A Message as the runtime would build it from a stream entry."""
    raw: dict[bytes, bytes] = {}
    conventional = {
        "type": type,
        "key": key,
        "event_id": event_id,
        "version": None if version is None else str(version),
        "schema_version": None if schema_version is None else str(schema_version),
    }
    for name, value in conventional.items():
        if value is not None:
            raw[name.encode()] = value.encode()
    if data is not None:
        encoded = data if isinstance(data, str | bytes) else json.dumps(data)
        raw[b"data"] = encoded if isinstance(encoded, bytes) else encoded.encode()
    for name, extra in (fields or {}).items():
        raw[name.encode()] = extra if isinstance(extra, bytes) else extra.encode()
    entry_id = f"{int(time.time() * 1000)}-{next(_sequence)}"
    return Message(stream, entry_id, raw, attempt, group)


async def deliver(
    handler: Handler,
    message: Message | None = None,
    *,
    max_attempts: int = 5,
    middleware: Sequence[Middleware | str] = (),
    tracer_provider: TracerProvider | None = None,
    **message_args: Any,
) -> Delivery:
    """Run `handler` on one message through the runtime's own dispatch rules.

    The handler's own middleware and typed validation (`model`) apply as in the worker.

    Args:
        handler: the handler under test (bound to a stream, as `@handler` does).
        message: the message; or build one from `message_args` (see `make_message`), on the
            handler's first stream.
        max_attempts: as the setting: a failure at this attempt dead-letters.
        middleware: worker-wide middleware to run around the call, as `Worker(middleware=)`.
        tracer_provider: trace the delivery as `SYNCWORKER_TRACING` does, into this provider
            (an SDK `TracerProvider` with an `InMemorySpanExporter`, say); needs the otel extra.
    """
    if message is None:
        message_args.setdefault("stream", handler.streams[0] if handler.streams else "test")
        message = make_message(**message_args)
    bound = (
        handler
        if message.stream in handler.streams
        else handler.bind([message.stream], partitions=0)  # the stream as given, even "orders"
    )
    policy = RetryPolicy(max_attempts, Backoff(), claim_idle=60.0)
    recorder = _Recorder(policy)
    chain = load(middleware, "middleware")
    if tracer_provider is not None:
        from worker.middleware.tracing import Tracing

        chain.insert(0, Tracing(policy, tracer_provider=tracer_provider))
    routes = RouteTable([bound], Stats(), chain)
    dispatcher = Dispatcher(routes, recorder, 0)  # type: ignore[arg-type]
    await dispatcher.process(message)
    return recorder.results[-1]


async def deliver_batch(
    handler: BatchHandler,
    messages: list[Message],
    *,
    max_attempts: int = 5,
    tracer_provider: TracerProvider | None = None,
) -> list[Delivery]:
    """Run a batch handler on `messages` as one batch, through the runtime's own rules.

    Returns one `Delivery` per message, in order: what the runtime would do with each (a
    raised exception or a result of the wrong length gives every message that failure).

    Args:
        handler: the batch handler under test.
        messages: the batch (see `make_message`); all of one stream.
        max_attempts: as the setting: a failure at this attempt dead-letters.
        tracer_provider: trace the call as `SYNCWORKER_TRACING` does (one span for the
            batch), into this provider; needs the otel extra.
    """
    if not messages:
        return []
    stream = messages[0].stream
    bound = handler if stream in handler.streams else handler.bind([stream])
    policy = RetryPolicy(max_attempts, Backoff(), claim_idle=60.0)
    recorder = _Recorder(policy)
    chain: list[Middleware] = []
    if tracer_provider is not None:
        from worker.middleware.tracing import Tracing

        chain.append(Tracing(policy, tracer_provider=tracer_provider))
    stats = Stats()
    routes = RouteTable([bound], stats, chain)
    dispatcher = Dispatcher(routes, recorder, 0)  # type: ignore[arg-type]
    await BatchDispatcher(dispatcher, stats).process_batch(list(messages))
    by_id = {d.message.id: d for d in recorder.results}  # an envelope opens a new Message
    return [by_id[m.id] for m in messages]
