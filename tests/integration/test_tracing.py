"""Tracing against a real Redis: a trace runs from the publisher through the worker, across
retries, dead-lettering, replays and relays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from handlers.relay import Relay
from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Publisher, WorkerSettings, handler
from worker.admin import deadletters
from worker.middleware.tracing import Tracing
from worker.redis_server import RedisServer
from worker.runtime.policy import RetryPolicy

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


async def _drained(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


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
