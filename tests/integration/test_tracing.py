"""Tracing against a real Redis: a trace runs from the publisher through the worker, across
retries, dead-lettering, replays and relays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from handlers.relay import Relay
from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Outcome, Publisher, Reject, Retry, WorkerSettings, handler
from worker.admin import deadletters
from worker.middleware.tracing import Tracing
from worker.publish import event_fields
from worker.redis_server import RedisServer
from worker.runtime.policy import RetryPolicy
from worker.tracing import current_fields

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider of the test's own, never the global one, exporting to memory."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def traced(settings: WorkerSettings, provider: TracerProvider) -> dict[str, Any]:
    """Worker options that trace into `provider`, as SYNCWORKER_TRACING does globally."""
    return {"middleware": [Tracing(RetryPolicy.from_settings(settings), tracer_provider=provider)]}


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {})[name]


class TestTraceContinuity:
    async def test_publisher_to_worker(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """The worker's span has the publisher's trace id and its `send` span as parent."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream)
        async def h(msg: Message) -> None:
            pass

        with provider.get_tracer("app").start_as_current_span("checkout"):
            entry_id = await Publisher(redis, tracer_provider=provider).publish(
                stream, "order.paid", {"id": 1}, key="o-1"
            )
        settings = make_settings(redis_server.url, group)
        async with running(settings, [h], **traced(settings, provider)):
            await eventually(lambda: named(exporter, f"process {stream}"))
        (send,) = named(exporter, f"send {stream}")
        (process,) = named(exporter, f"process {stream}")
        assert process.context.trace_id == send.context.trace_id
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert attr(process, "messaging.message.id") == entry_id
        assert attr(process, "messaging.consumer.group.name") == group
        assert attr(process, "syncworker.outcome") == "ok"


class TestFailures:
    async def test_retry_then_dead_letter_then_replay(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """Attempt 1 retries, attempt 2 dead-letters (one span each, with events); the dead
        letter keeps the traceparent, and its replay starts a trace linked to the original."""
        stream, group = names["stream"], names["group"]
        healed = False

        @handler(stream=stream)
        async def flaky(msg: Message) -> None:
            if not healed:
                raise ValueError("downstream rejects it")

        with provider.get_tracer("app").start_as_current_span("checkout"):
            await Publisher(redis, tracer_provider=provider).publish(stream, "t", {"id": 1})
        (send,) = named(exporter, f"send {stream}")
        settings = make_settings(redis_server.url, group, max_attempts=2)
        async with running(settings, [flaky], **traced(settings, provider)):
            # Given two failed attempts: a retry, then a dead letter
            await eventually(lambda: len(named(exporter, f"process {stream}")) == 2)
            await eventually(lambda: dead_letters(redis, stream))
            first, second = named(exporter, f"process {stream}")
            assert [attr(s, "syncworker.attempt") for s in (first, second)] == [1, 2]
            assert [attr(s, "syncworker.outcome") for s in (first, second)] == [
                "retry",
                "dead_letter",
            ]
            assert [e.name for e in first.events] == ["exception", "retry"]
            assert [e.name for e in second.events] == ["exception", "dead_letter"]
            assert {s.context.trace_id for s in (first, second)} == {send.context.trace_id}
            (letter,) = await redis.xrange(stream + ":dlq")
            assert b"traceparent" in letter[1]

            # When the dead letter is replayed and its handler now succeeds
            healed = True
            await deadletters.replay(redis, stream + ":dlq", stream, [letter[0].decode()])
            await eventually(lambda: len(named(exporter, f"process {stream}")) == 3)

        # Then the replay's span is the root of a new trace, linked to the original send span
        replay = named(exporter, f"process {stream}")[2]
        assert attr(replay, "syncworker.outcome") == "ok"
        assert replay.parent is None
        assert replay.context.trace_id != send.context.trace_id
        (link,) = replay.links
        assert (link.context.trace_id, link.context.span_id) == (
            send.context.trace_id,
            send.context.span_id,
        )


class TestRelay:
    async def test_downstream_spans_are_children_of_the_relay_span(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """A per-message relay's entry carries the relay's span: the downstream handler's
        span is its child, in the trace the original publisher started."""
        source, group = names["stream"], names["group"]
        downstream = f"{source}:payments"

        @handler(stream=downstream)
        async def payments(msg: Message) -> None:
            pass

        relay = Relay(to=downstream, state_prefix=f"relay:{names['suffix']}", batch=False).bind(
            [source]
        )
        with provider.get_tracer("app").start_as_current_span("checkout"):
            await Publisher(redis, tracer_provider=provider).publish(source, "t", {"id": 1})
        settings = make_settings(redis_server.url, group)
        async with running(settings, [relay, payments], **traced(settings, provider)):
            await eventually(lambda: named(exporter, f"process {downstream}"))
            await eventually(lambda: _drained(redis, source, group))
        (send,) = named(exporter, f"send {source}")
        (relayed,) = named(exporter, f"process {source}")
        (final,) = named(exporter, f"process {downstream}")
        assert relayed.parent is not None and relayed.parent.span_id == send.context.span_id
        assert final.parent is not None and final.parent.span_id == relayed.context.span_id
        assert final.context.trace_id == send.context.trace_id

    async def test_a_batch_relay_keeps_each_entry_in_its_origins_trace(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """A batch relay forwards two events of two traces in one call: its span links to
        both, and each downstream span is the child of its own event's `send` span."""
        source, group = names["stream"], names["group"]
        downstream = f"{source}:payments"

        @handler(stream=downstream)
        async def payments(msg: Message) -> None:
            pass

        relay = Relay(to=downstream, state_prefix=f"relay:{names['suffix']}").bind([source])
        settings = make_settings(redis_server.url, group)
        async with running(settings, [relay, payments], **traced(settings, provider)):
            await redis.xadd(source, event_fields("warm.up", {}))  # see `warm_up`
            await eventually(lambda: named(exporter, f"process {downstream}"))
            await eventually(lambda: _drained(redis, downstream, group))
            exporter.clear()
            sent = await publish_traced(redis, provider, source, 2)
            await eventually(lambda: len(named(exporter, f"process {downstream}")) == 2)
            await eventually(lambda: _drained(redis, source, group))
        (relayed,) = named(exporter, f"process {source}")
        assert attr(relayed, "messaging.batch.message_count") == 2
        assert [link[:2] for link in linked(relayed)] == [
            (send.context.trace_id, send.context.span_id) for _, send in sent
        ]
        parents = {
            (final.context.trace_id, final.parent.span_id if final.parent else None)
            for final in named(exporter, f"process {downstream}")
        }
        assert parents == {(send.context.trace_id, send.context.span_id) for _, send in sent}


async def _drained(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


async def publish_traced(
    redis: Redis, provider: TracerProvider, stream: str, count: int
) -> list[tuple[str, ReadableSpan]]:
    """Add `count` entries at once (MULTI: a blocked read returns them together), each written
    in a `send` span of a trace of its own; returns each entry's id and span."""
    sends: list[ReadableSpan] = []
    pipe = redis.pipeline(transaction=True)
    for n in range(count):
        with provider.get_tracer("app").start_as_current_span(f"send {stream}") as span:
            fields = event_fields("order.paid", {"n": n}, key=uuid.uuid4().hex)
            pipe.xadd(stream, {**fields, **current_fields()})
        assert isinstance(span, ReadableSpan)
        sends.append(span)
    ids = [i.decode() for i in await pipe.execute()]
    return list(zip(ids, sends, strict=True))


async def warm_up(redis: Redis, stream: str, group: str, spans: InMemorySpanExporter) -> None:
    """The first read takes one entry (to learn their size): let it pass, untraced."""
    await redis.xadd(stream, event_fields("warm.up", {}))
    await eventually(lambda: named(spans, f"process {stream}"))
    await eventually(lambda: _drained(redis, stream, group))
    spans.clear()


def linked(span: ReadableSpan) -> list[tuple[int, int, str, int]]:
    """(trace id, span id, message id, attempt) of each link of `span`."""
    return [
        (
            link.context.trace_id,
            link.context.span_id,
            (link.attributes or {})["messaging.message.id"],
            (link.attributes or {})["syncworker.attempt"],
        )
        for link in span.links
    ]


class TestBatchHandlers:
    async def test_a_batch_call_is_one_span_linked_to_each_message(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """Three messages of three traces in one call: one CONSUMER span, a root with the
        batch attributes and one link per message to its producer's span."""
        stream, group = names["stream"], names["group"]
        calls: list[int] = []

        @handler(stream=stream, batch=True, name="store")
        async def store(msgs: list[Message]) -> list[Outcome]:
            calls.append(len(msgs))
            return [None] * len(msgs)

        settings = make_settings(redis_server.url, group)
        async with running(settings, [store], **traced(settings, provider)):
            await warm_up(redis, stream, group, exporter)
            sent = await publish_traced(redis, provider, stream, 3)
            await eventually(lambda: named(exporter, f"process {stream}"))
            await eventually(lambda: _drained(redis, stream, group))
        assert calls == [1, 3]
        (span,) = named(exporter, f"process {stream}")
        assert span.kind == SpanKind.CONSUMER
        assert span.parent is None  # many traces: the messages are links
        assert span.context.trace_id not in {send.context.trace_id for _, send in sent}
        assert dict(span.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": stream,
            "messaging.consumer.group.name": group,
            "messaging.batch.message_count": 3,
            "syncworker.handler": "store",
            "syncworker.batch.ok": 3,
            "syncworker.batch.retry": 0,
            "syncworker.batch.dead_letter": 0,
        }
        assert linked(span) == [
            (send.context.trace_id, send.context.span_id, entry_id, 1) for entry_id, send in sent
        ]
        assert span.status.status_code == StatusCode.UNSET
        assert not span.events

    async def test_retry_and_reject_outcomes_are_events_of_the_batch_span(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """One call returning ok, Retry and Reject: the span counts them, and the retry and
        the dead letter are events naming their message; the call itself did not fail."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream, batch=True)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            outcomes: list[Outcome] = [None, Retry("rate limited", delay=0.2), Reject("bad")]
            return outcomes[: len(msgs)] if msgs[0].attempt == 1 else [None] * len(msgs)

        settings = make_settings(redis_server.url, group)
        async with running(settings, [sink], **traced(settings, provider)):
            await warm_up(redis, stream, group, exporter)
            (ok_id, _), (retry_id, _), (reject_id, _) = await publish_traced(
                redis, provider, stream, 3
            )
            await eventually(lambda: len(named(exporter, f"process {stream}")) == 2)
            await eventually(lambda: _drained(redis, stream, group))
        first, second = named(exporter, f"process {stream}")
        assert [attr(first, f"syncworker.batch.{o}") for o in ("ok", "retry", "dead_letter")] == [
            1,
            1,
            1,
        ]
        assert first.status.status_code == StatusCode.UNSET
        retry, dead = first.events
        assert (retry.name, dict(retry.attributes or {})) == (
            "retry",
            {
                "syncworker.retry.delay_s": 0.2,
                "syncworker.retry.next_attempt": 2,
                "messaging.message.id": retry_id,
                "syncworker.attempt": 1,
                "exception.type": "Retry",
                "exception.message": "rate limited",
            },
        )
        assert dead.name == "dead_letter"
        assert (dead.attributes or {})["messaging.message.id"] == reject_id
        assert (dead.attributes or {})["syncworker.dead_letter.reason"] == "rejected"
        # The retried message runs again alone, as a batch of one of attempt 2.
        assert attr(second, "messaging.batch.message_count") == 1
        assert attr(second, "messaging.message.id") == retry_id
        assert attr(second, "syncworker.attempt") == 2
        assert [link[2:] for link in linked(second)] == [(retry_id, 2)]
        assert ok_id not in {link[2] for link in linked(second)}

    async def test_a_raising_batch_call_is_an_error_span(
        self,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
        exporter: InMemorySpanExporter,
    ) -> None:
        """A call that raises: the span records the exception, its status is error, and
        every message of the batch has its retry event."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream, batch=True)
        async def sink(msgs: list[Message]) -> list[Outcome]:
            if msgs[0].attempt == 1:
                raise ConnectionError("database away")
            return [None] * len(msgs)

        settings = make_settings(redis_server.url, group)
        async with running(settings, [sink], **traced(settings, provider)):
            await warm_up(redis, stream, group, exporter)
            sent = await publish_traced(redis, provider, stream, 2)
            await eventually(lambda: _drained(redis, stream, group))
        failed = named(exporter, f"process {stream}")[0]
        assert failed.status.status_code == StatusCode.ERROR
        assert failed.status.description == "ConnectionError: database away"
        assert [e.name for e in failed.events] == ["exception", "retry", "retry"]
        assert [(e.attributes or {})["messaging.message.id"] for e in failed.events[1:]] == [
            entry_id for entry_id, _ in sent
        ]
        assert attr(failed, "syncworker.batch.retry") == 2
        later = named(exporter, f"process {stream}")[1:]
        assert all(s.status.status_code == StatusCode.UNSET for s in later)
        assert sum(attr(s, "syncworker.batch.ok") for s in later) == 2


class TestPublishCommand:
    def test_publish_continues_the_callers_trace(
        self, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """`syncworker publish` with tracing on writes a traceparent in the trace given by
        `TRACEPARENT`, under a `send` span of its own (a separate process: the command sets
        up the SDK globally)."""
        caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        env = {
            **os.environ,
            "SYNCWORKER_REDIS_URL": redis_server.url,
            "SYNCWORKER_TRACING": "true",
            "OTEL_TRACES_EXPORTER": "none",
            "TRACEPARENT": caller,
        }
        env.pop("SYNCWORKER_CONFIG", None)
        stream = names["stream"]
        done = subprocess.run(
            [sys.executable, "-m", "worker", "publish", stream, "--type", "t", "--data", "{}"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            ((entry_id, fields),) = client.xrange(stream)
        finally:
            client.close()
        assert done.stdout.strip() == entry_id
        version, trace_id, span_id, _ = fields["traceparent"].split("-")
        assert (version, trace_id) == ("00", "0af7651916cd43dd8448eb211c80319c")
        assert span_id != "b7ad6b7169203331"  # the command's own send span


class TestRunCommand:
    async def test_run_sets_up_the_sdk_and_flushes_at_exit(
        self,
        tmp_path: Path,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
        provider: TracerProvider,
    ) -> None:
        """`syncworker run` with `tracing = true` sets up the SDK from the OTEL_* variables
        (here the console exporter) and exports the span of each call by the time it exits."""
        stream, group = names["stream"], names["group"]
        config = tmp_path / "worker.toml"
        config.write_text(
            f'redis_url = "{redis_server.url}"\n'
            f'group = "{group}"\n'
            "metrics_port = 0\n"
            "block = 0.1\n"
            "tracing = true\n"
            "[[routes]]\n"
            f'stream = "{stream}"\n'
            'handler = "tests.integration.plugins:Recorder"\n'
        )
        with provider.get_tracer("app").start_as_current_span("checkout") as outer:
            await Publisher(redis).publish(stream, "order.paid", {"n": 1})
        trace_id = f"0x{outer.get_span_context().trace_id:032x}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCWORKER_", "OTEL_"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            env={
                **clean,
                "PYTHONPATH": str(ROOT),
                "TEST_STREAM": stream,
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_SERVICE_NAME": "orders-worker",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            async def handled() -> bool:
                return await redis.llen(f"{stream}:processed") == 1 and (
                    await _drained(redis, stream, group)
                )

            await eventually(handled, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f'"name": "process {stream}"' in out, out
        assert f'"trace_id": "{trace_id}"' in out
        assert '"service.name": "orders-worker"' in out
