"""/metrics, /healthz and /readyz of a running worker, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually, make_settings, pending_count, running
from tests.ops_helpers import http_get, samples, value
from worker import Message, Reject, handler
from worker.ops.server import OpsServer
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestMetrics:
    async def test_counts_after_successes_retries_and_dead_letters(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A scrape after a mixed run reports each outcome, the histograms and the gauges."""
        stream, group = names["stream"], names["group"]
        attempts: dict[str, int] = {}

        @handler(stream=stream, name="sync")
        async def sync(msg: Message) -> None:
            attempts[msg.type or ""] = msg.attempt
            if msg.type == "flaky" and msg.attempt == 1:
                raise ConnectionError("downstream blip")
            if msg.type == "poison":
                raise ValueError("cannot apply")
            if msg.type == "rejected":
                raise Reject("bad input")

        # Given three good events, one that fails once, one that always fails, one rejected
        publisher = Publisher(redis)
        for kind in ("good", "good", "good", "flaky", "poison", "rejected"):
            await publisher.publish(stream, kind, {}, key=kind)
        ops = OpsServer(host="127.0.0.1", port=0)
        settings = make_settings(redis_server.url, group, max_attempts=3, stats_interval=0.05)

        # When the worker has settled all of them
        async with running(settings, [sync], services=[ops]):

            async def settled() -> bool:
                _, body = await http_get(ops.port, "/metrics")
                found = samples(body.decode())
                return (
                    value(found, "syncworker_messages_total", stream=stream, group=group,
                          handler="sync", outcome="dead_letter") == 2
                    and value(found, "syncworker_messages_total", stream=stream, group=group,
                              handler="sync", outcome="ok") == 4
                    and value(found, "syncworker_dead_letter_length",
                              stream=stream, group=group) == 2
                    and value(found, "syncworker_group_pending", stream=stream, group=group) == 0
                )  # fmt: skip

            await eventually(settled)
            status, body = await http_get(ops.port, "/metrics")

        # Then every series counts what happened
        assert status == 200
        found = samples(body.decode())
        labels = {"stream": stream, "group": group}
        assert (
            value(found, "syncworker_messages_total", **labels, handler="sync", outcome="ok") == 4
        )
        retries = value(
            found, "syncworker_messages_total", **labels, handler="sync", outcome="retry"
        )
        assert retries == 3  # flaky once, poison on attempts 1 and 2
        assert value(found, "syncworker_handler_seconds_count", **labels, handler="sync") == 4
        assert value(found, "syncworker_end_to_end_seconds_count", **labels) == 4
        assert value(found, "syncworker_end_to_end_seconds_bucket", **labels, le="+Inf") == 4
        assert value(found, "syncworker_group_lag", **labels) == 0
        assert value(found, "syncworker_inflight", **labels) == 0
        assert value(found, "syncworker_reclaimed_total", **labels) == 0
        assert value(found, "syncworker_stream_length", **labels) == 6
        assert attempts["flaky"] == 2 and attempts["poison"] == 3
        assert await pending_count(redis, stream, group) == 0

    async def test_inflight_counts_held_entries(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Entries whose handlers are still running show in syncworker_inflight, then leave it."""
        stream, group = names["stream"], names["group"]
        release = asyncio.Event()

        @handler(stream=stream)
        async def slow(msg: Message) -> None:
            await release.wait()

        for n in range(3):
            await Publisher(redis).publish(stream, "t", {}, key=f"k{n}")
        ops = OpsServer(host="127.0.0.1", port=0)
        async with running(make_settings(redis_server.url, group), [slow], services=[ops]):

            async def inflight_is(n: int) -> bool:
                found = samples((await http_get(ops.port, "/metrics"))[1].decode())
                return value(found, "syncworker_inflight", stream=stream, group=group) == n

            await eventually(lambda: inflight_is(3))
            release.set()
            await eventually(lambda: inflight_is(0))


class TestProbes:
    async def test_readiness_follows_redis_and_liveness_stays_up(
        self, names: dict[str, str]
    ) -> None:
        """/readyz turns 503 while Redis is stopped and 200 when it is back; /healthz stays 200."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream)
        async def noop(msg: Message) -> None:
            pass

        with RedisServer() as server:
            ops = OpsServer(host="127.0.0.1", port=0)
            settings = make_settings(server.url, group, redis_timeout=1.0)
            async with running(settings, [noop], services=[ops]):

                async def ready_is(code: int) -> bool:
                    return (await http_get(ops.port, "/readyz"))[0] == code

                # Given a running worker with Redis up, it is ready and live
                await eventually(lambda: ready_is(200))
                assert (await http_get(ops.port, "/healthz"))[0] == 200

                # When Redis stops, readiness fails but liveness holds
                server.stop()
                await eventually(lambda: ready_is(503))
                _, body = await http_get(ops.port, "/readyz")
                assert json.loads(body)["status"] == "redis unavailable"
                assert (await http_get(ops.port, "/healthz"))[0] == 200

                # Then when it comes back, so does readiness
                server.start()
                await eventually(lambda: ready_is(200), timeout=20)

    async def test_liveness_fails_when_the_read_loop_stops_turning(
        self, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """/healthz turns 503 once the read loop's last turn is older than the deadline."""

        @handler(stream=names["stream"])
        async def noop(msg: Message) -> None:
            pass

        ops = OpsServer(host="127.0.0.1", port=0)
        settings = make_settings(redis_server.url, names["group"], block=5.0)
        async with running(settings, [noop], services=[ops]) as worker:
            status, body = await http_get(ops.port, "/healthz")
            assert (status, json.loads(body)["status"]) == (200, "ok")
            # The loop now waits in a 5 s XREADGROUP; pretend its last turn was long ago.
            worker.stats.last_read_loop = time.monotonic() - 3600
            status, body = await http_get(ops.port, "/healthz")
            assert (status, json.loads(body)["status"]) == (503, "stuck")

    async def test_unknown_path_is_404(
        self, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Paths other than the three endpoints get 404."""

        @handler(stream=names["stream"])
        async def noop(msg: Message) -> None:
            pass

        ops = OpsServer(host="127.0.0.1", port=0)
        async with running(make_settings(redis_server.url, names["group"]), [noop], services=[ops]):
            assert (await http_get(ops.port, "/nope"))[0] == 404
