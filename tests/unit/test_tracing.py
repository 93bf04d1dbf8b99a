"""Tracing: each delivery attempt is a CONSUMER span continuing its producer's trace, with the
messaging attributes, an outcome, and events for retries and dead letters (no Redis)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from handlers.relay import Relay
from tests.unit.test_middleware import named
from worker import Message, Publisher, Reject, WorkerSettings, handler
from worker.batch import Outcome
from worker.middleware import worker_middleware
from worker.middleware.tracing import Tracing
from worker.runtime.batch_dispatch import BatchResultError
from worker.runtime.policy import RetryPolicy
from worker.testing import deliver, deliver_batch, make_message
from worker.tracing import context_from_environment, current_fields

ROOT = Path(__file__).resolve().parents[2]
Spans = tuple[TracerProvider, InMemorySpanExporter]


@pytest.fixture
def spans() -> Iterator[Spans]:
    """A tracer provider of its own (never the global one) exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def carried(traceparent: str | bytes) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C traceparent value."""
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    version, trace_id, span_id, _flags = text.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def only(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def producer_fields(provider: TracerProvider) -> tuple[dict[str, str], int, int]:
    """Trace fields written inside a producer's span, with that span's trace and span id."""
    with provider.get_tracer("app").start_as_current_span("checkout") as span:
        fields = current_fields()
        ctx = span.get_span_context()
    return fields, ctx.trace_id, ctx.span_id


@handler(stream="orders", types=["order.paid"])
async def ok(msg: Message) -> None:
    pass


class TestContinuity:
    async def test_the_consumer_span_is_a_child_of_the_producer_span(self, spans: Spans) -> None:
        """Same trace id, parent = the span the producer published in, kind CONSUMER."""
        provider, exporter = spans
        fields, trace_id, span_id = producer_fields(provider)
        result = await deliver(ok, type="order.paid", fields=fields, tracer_provider=provider)
        assert result.outcome == "ok"
        (span,) = only(exporter, "process orders")
        assert span.kind is SpanKind.CONSUMER
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == span_id

    async def test_the_handler_runs_inside_the_span(self, spans: Spans) -> None:
        """Spans the handler starts are children of the delivery's span."""
        provider, exporter = spans

        @handler(stream="orders")
        async def traced(msg: Message) -> None:
            with provider.get_tracer("app").start_as_current_span("charge card"):
                pass

        await deliver(traced, type="t", tracer_provider=provider)
        (child,) = only(exporter, "charge card")
        (parent,) = only(exporter, "process orders")
        assert child.parent is not None and child.parent.span_id == parent.context.span_id

    async def test_blocking_handlers_see_the_span_in_their_thread(self, spans: Spans) -> None:
        """A plain function's thread inherits the delivery's span as its current span."""
        provider, exporter = spans

        @handler(stream="orders")
        def blocking(msg: Message) -> None:
            with provider.get_tracer("app").start_as_current_span("in thread"):
                pass

        await deliver(blocking, type="t", tracer_provider=provider)
        (child,) = only(exporter, "in thread")
        (parent,) = only(exporter, "process orders")
        assert child.parent is not None and child.parent.span_id == parent.context.span_id

    async def test_no_traceparent_starts_a_new_trace(self, spans: Spans) -> None:
        """An entry without trace fields gets a root span."""
        provider, exporter = spans
        await deliver(ok, type="order.paid", tracer_provider=provider)
        (span,) = only(exporter, "process orders")
        assert span.parent is None

    async def test_cloudevents_carry_the_context_as_extension_attributes(
        self, spans: Spans
    ) -> None:
        """A CloudEvent's `traceparent` extension attribute is continued too."""
        provider, exporter = spans
        redis = fakeredis.FakeAsyncRedis()
        with provider.get_tracer("app").start_as_current_span("checkout") as span:
            await Publisher(redis, envelope="cloudevents").publish("ce", "order.paid", {"a": 1})
        ((entry_id, raw),) = await redis.xrange("ce")
        await redis.aclose()
        assert set(raw) == {b"data"}  # in the event, not beside it

        @handler(stream="ce", envelope="cloudevents")
        async def h(msg: Message) -> None:
            pass

        await deliver(h, Message("ce", entry_id.decode(), raw), tracer_provider=provider)
        (consumer,) = only(exporter, "process ce")
        assert consumer.context.trace_id == span.get_span_context().trace_id


class TestAttributes:
    async def test_messaging_attributes(self, spans: Spans) -> None:
        """System, destination, group, message id, operation, attempt, handler, outcome."""
        provider, exporter = spans
        msg = make_message("orders", type="order.paid", attempt=2, group="billing")
        await deliver(ok, msg, tracer_provider=provider)
        (span,) = only(exporter, "process orders")
        assert dict(span.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "orders",
            "messaging.consumer.group.name": "billing",
            "messaging.message.id": msg.id,
            "syncworker.attempt": 2,
            "syncworker.handler": ok.name,
            "syncworker.event_type": "order.paid",
            "syncworker.outcome": "ok",
        }

    async def test_skipped_entries_get_a_span_too(self, spans: Spans) -> None:
        """An entry no handler wants is recorded with outcome `skipped`."""
        provider, exporter = spans
        result = await deliver(ok, type="order.created", tracer_provider=provider)
        assert result.outcome == "skipped"
        (span,) = only(exporter, "process orders")
        assert span.attributes is not None
        assert span.attributes["syncworker.outcome"] == "skipped"


class TestFailures:
    async def test_retry_then_success_is_two_attempt_spans(self, spans: Spans) -> None:
        """Attempt 1 fails (outcome retry, a `retry` event, the exception recorded, status
        error); attempt 2 succeeds; both continue the producer's trace."""
        provider, exporter = spans
        fields, trace_id, _ = producer_fields(provider)

        @handler(stream="orders")
        async def flaky(msg: Message) -> None:
            if msg.attempt == 1:
                raise ConnectionError("downstream unavailable")

        first = make_message("orders", type="t", fields=fields, attempt=1)
        second = make_message("orders", type="t", fields=fields, attempt=2)
        assert (await deliver(flaky, first, tracer_provider=provider)).outcome == "retry"
        assert (await deliver(flaky, second, tracer_provider=provider)).outcome == "ok"
        one, two = only(exporter, "process orders")
        assert (one.attributes or {})["syncworker.attempt"] == 1
        assert (one.attributes or {})["syncworker.outcome"] == "retry"
        assert one.status.status_code is StatusCode.ERROR
        assert [e.name for e in one.events] == ["exception", "retry"]
        assert (one.events[0].attributes or {})["exception.type"] == "ConnectionError"
        assert (one.events[1].attributes or {})["syncworker.retry.next_attempt"] == 2
        assert (two.attributes or {})["syncworker.attempt"] == 2
        assert (two.attributes or {})["syncworker.outcome"] == "ok"
        assert two.events == ()
        assert one.context.trace_id == two.context.trace_id == trace_id

    async def test_reject_is_a_dead_letter_event(self, spans: Spans) -> None:
        """`Reject` dead-letters at once: outcome dead_letter, event with the reason."""
        provider, exporter = spans

        @handler(stream="orders")
        async def strict(msg: Message) -> None:
            raise Reject("unsupported currency")

        assert (await deliver(strict, type="t", tracer_provider=provider)).outcome == "dead_letter"
        (span,) = only(exporter, "process orders")
        assert (span.attributes or {})["syncworker.outcome"] == "dead_letter"
        event = span.events[-1]
        assert event.name == "dead_letter"
        assert (event.attributes or {})["syncworker.dead_letter.reason"] == "rejected"

    async def test_last_attempt_is_a_dead_letter_event(self, spans: Spans) -> None:
        """A failure at the last attempt allowed dead-letters, as the settler decides."""
        provider, exporter = spans

        @handler(stream="orders")
        async def failing(msg: Message) -> None:
            raise ValueError("still broken")

        msg = make_message("orders", type="t", attempt=3)
        result = await deliver(failing, msg, max_attempts=3, tracer_provider=provider)
        assert result.outcome == "dead_letter"
        (span,) = only(exporter, "process orders")
        event = span.events[-1]
        assert event.name == "dead_letter"
        assert (event.attributes or {})["syncworker.dead_letter.reason"] == "attempts exhausted"

    async def test_invalid_event_is_recorded_with_its_field_paths(self, spans: Spans) -> None:
        """Typed validation runs inside the span: the InvalidEvent is its exception."""
        from pydantic import BaseModel

        class Paid(BaseModel):
            order_id: int

        provider, exporter = spans

        @handler(stream="orders", model=Paid)
        async def typed(msg: Message) -> None:
            pass

        result = await deliver(typed, type="t", data={"order_id": "x"}, tracer_provider=provider)
        assert result.outcome == "dead_letter"
        (span,) = only(exporter, "process orders")
        exception = span.events[0].attributes or {}
        assert exception["exception.type"] == "worker.errors.InvalidEvent"
        assert "order_id: Input should be a valid integer" in str(exception["exception.message"])

    async def test_shutdown_interrupting_a_call_is_released_not_failed(self, spans: Spans) -> None:
        """A call cancelled by shutdown records outcome `released`, no error and no event:
        the entry runs again on the same attempt."""
        provider, exporter = spans
        started = asyncio.Event()

        @handler(stream="orders")
        async def slow(msg: Message) -> None:
            started.set()
            await asyncio.sleep(60)

        task = asyncio.create_task(deliver(slow, type="t", tracer_provider=provider))
        await started.wait()
        task.cancel()  # as the worker's shutdown cancels its lanes
        with pytest.raises(asyncio.CancelledError):
            await task
        (span,) = only(exporter, "process orders")
        assert (span.attributes or {})["syncworker.outcome"] == "released"
        assert span.status.status_code is StatusCode.UNSET
        assert span.events == ()


class TestLinks:
    async def test_a_replayed_dead_letter_starts_a_trace_linked_to_the_original(
        self, spans: Spans
    ) -> None:
        """A replay keeps its original traceparent; its span is a new root linking to it."""
        provider, exporter = spans
        fields, trace_id, span_id = producer_fields(provider)
        replayed = {**fields, "replay_of_stream": "orders", "replay_of_id": "1-1"}
        await deliver(ok, type="order.paid", fields=replayed, tracer_provider=provider)
        (span,) = only(exporter, "process orders")
        assert span.parent is None
        assert span.context.trace_id != trace_id
        (link,) = span.links
        assert (link.context.trace_id, link.context.span_id) == (trace_id, span_id)

    async def test_relay_writes_its_own_span_into_forwarded_entries(self, spans: Spans) -> None:
        """Inside the relay's delivery span, the downstream entry carries that span's
        context, not the source's traceparent."""
        provider, exporter = spans
        fields, trace_id, _ = producer_fields(provider)
        relay = Relay(to="payments").bind(["orders"])
        assert isinstance(relay, Relay)
        written: list[list[bytes | str]] = []

        async def capture(msg: Message) -> None:  # the relay's entry, without Redis
            from handlers.relay import _trace_fields

            written.append(relay.entry(msg, relay.targets[0], _trace_fields()))

        relay.handle = capture  # type: ignore[method-assign]
        await deliver(relay, type="t", fields=fields, tracer_provider=provider)
        (span,) = only(exporter, "process orders")
        entry = written[0]
        out = dict(zip(entry[::2], entry[1::2], strict=True))
        assert carried(out["traceparent"]) == (trace_id, span.context.span_id)
        assert b"traceparent" not in out  # the source's is replaced, not repeated


@handler(stream="orders", types=["order.paid"], batch=True, name="sink")
async def sink(msgs: list[Message]) -> list[Outcome]:
    return [None] * len(msgs)


class TestBatchCalls:
    async def test_a_batch_of_one_continues_its_messages_trace(self, spans: Spans) -> None:
        """A lone message (the common case on a quiet stream) stays in its producer's trace:
        the batch span is its child, and links to it as every batch span does."""
        provider, exporter = spans
        fields, trace_id, span_id = producer_fields(provider)
        msg = make_message("orders", type="order.paid", fields=fields)
        (result,) = await deliver_batch(sink, [msg], tracer_provider=provider)
        assert result.outcome == "ok"
        (span,) = only(exporter, "process orders")
        assert span.parent is not None and span.parent.span_id == span_id
        assert span.context.trace_id == trace_id
        assert span.attributes is not None
        assert span.attributes["messaging.message.id"] == msg.id
        assert span.attributes["messaging.batch.message_count"] == 1
        (link,) = span.links
        assert (link.context.trace_id, link.context.span_id) == (trace_id, span_id)

    async def test_a_replay_in_a_batch_is_a_link_not_the_parent(self, spans: Spans) -> None:
        """A replayed dead letter, even alone, starts a new trace, linked to the original."""
        provider, exporter = spans
        fields, trace_id, _ = producer_fields(provider)
        replayed = {**fields, "replay_of_stream": "orders", "replay_of_id": "1-1"}
        msg = make_message("orders", type="order.paid", fields=replayed)
        await deliver_batch(sink, [msg], tracer_provider=provider)
        (span,) = only(exporter, "process orders")
        assert span.parent is None and span.context.trace_id != trace_id
        (link,) = span.links
        assert link.attributes is not None
        assert link.attributes["syncworker.link"] == "replay_of"

    async def test_the_batch_handler_runs_inside_the_span(self, spans: Spans) -> None:
        """Spans a batch handler starts (its SQL, its HTTP calls) are children of the call's
        span, in a blocking function's thread too."""
        provider, exporter = spans

        @handler(stream="orders", batch=True)
        def blocking(msgs: list[Message]) -> list[Outcome]:
            with provider.get_tracer("app").start_as_current_span("insert"):
                return [None] * len(msgs)

        msgs = [make_message("orders", type="t") for _ in range(2)]
        await deliver_batch(blocking, msgs, tracer_provider=provider)
        (call,) = only(exporter, "process orders")
        (insert,) = only(exporter, "insert")
        assert insert.parent is not None and insert.parent.span_id == call.context.span_id

    async def test_a_result_of_the_wrong_length_is_an_error_span(self, spans: Spans) -> None:
        """A result that is not one outcome per message fails the call as a whole."""
        provider, exporter = spans

        @handler(stream="orders", batch=True)
        async def short(msgs: list[Message]) -> list[Outcome]:
            return [None]

        msgs = [make_message("orders", type="t") for _ in range(2)]
        results = await deliver_batch(short, msgs, tracer_provider=provider)
        assert [type(r.error) for r in results] == [BatchResultError] * 2
        (span,) = only(exporter, "process orders")
        assert span.status.status_code is StatusCode.ERROR
        assert [e.name for e in span.events] == ["exception", "retry", "retry"]

    async def test_entries_no_batch_handler_wants_get_a_skipped_span(self, spans: Spans) -> None:
        """As for single messages, an entry of an unwanted type is recorded as `skipped`,
        and stays out of the call and its span."""
        provider, exporter = spans
        wanted = make_message("orders", type="order.paid")
        unwanted = make_message("orders", type="order.created")
        results = await deliver_batch(sink, [wanted, unwanted], tracer_provider=provider)
        assert [r.outcome for r in results] == ["ok", "skipped"]
        call, skipped = sorted(
            only(exporter, "process orders"),
            key=lambda s: (s.attributes or {}).get("syncworker.outcome", ""),
        )
        assert (call.attributes or {})["messaging.batch.message_count"] == 1
        assert (skipped.attributes or {})["syncworker.outcome"] == "skipped"
        assert (skipped.attributes or {})["messaging.message.id"] == unwanted.id


class TestPublisher:
    async def test_publish_writes_a_producer_span_and_its_traceparent(self, spans: Spans) -> None:
        """`Publisher(tracer_provider=...)` records `send <stream>` under the caller's span
        and writes that span's context into the entry."""
        provider, exporter = spans
        redis = fakeredis.FakeAsyncRedis()
        publisher = Publisher(redis, tracer_provider=provider)
        with provider.get_tracer("app").start_as_current_span("checkout") as outer:
            entry_id = await publisher.publish("orders", "order.paid", {"a": 1})
        ((_, raw),) = await redis.xrange("orders")
        await redis.aclose()
        (send,) = only(exporter, "send orders")
        assert send.kind is SpanKind.PRODUCER
        assert send.parent is not None
        assert send.parent.span_id == outer.get_span_context().span_id
        assert (send.attributes or {})["messaging.message.id"] == entry_id
        assert carried(raw[b"traceparent"]) == (send.context.trace_id, send.context.span_id)

    async def test_untraced_publish_writes_no_trace_fields(self) -> None:
        """Outside any span and without a provider, entries get no trace fields."""
        redis = fakeredis.FakeAsyncRedis()
        await Publisher(redis).publish("orders", "order.paid", {"a": 1})
        ((_, raw),) = await redis.xrange("orders")
        await redis.aclose()
        assert set(raw) == {b"type", b"data"}


def test_traceparent_from_the_environment() -> None:
    """`TRACEPARENT`/`TRACESTATE` (as CI systems pass them) give the caller's context."""
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = context_from_environment({"TRACEPARENT": tp, "TRACESTATE": "k=v"})
    assert current_fields(ctx) == {"traceparent": tp, "tracestate": "k=v"}


class TestSetting:
    def test_tracing_setting_adds_the_middleware_outermost(self) -> None:
        """`SYNCWORKER_TRACING=true` puts tracing before `SYNCWORKER_MIDDLEWARE`."""
        settings = WorkerSettings(tracing=True, middleware=["tests.unit.test_middleware:named"])
        chain = worker_middleware(settings, RetryPolicy.from_settings(settings))
        assert isinstance(chain[0], Tracing)
        assert chain[1:] == [named]

    def test_tracing_without_the_extra_is_a_config_error(self) -> None:
        """Tracing asked for without OpenTelemetry installed fails at start-up, saying how
        to install it."""
        script = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())
from worker import ConfigError, WorkerSettings
from worker.middleware import worker_middleware
from worker.runtime.policy import RetryPolicy

settings = WorkerSettings(tracing=True)
try:
    worker_middleware(settings, RetryPolicy.from_settings(settings))
except ConfigError as exc:
    print(exc)
"""
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert "SYNCWORKER_TRACING" in done.stdout, done.stderr
        assert "pip install 'syncworker[otel]'" in done.stdout
