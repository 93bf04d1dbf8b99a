"""The start-up check warns about Redis servers that can lose streams, and trusts safe ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from redis.asyncio import Redis

from tests.helpers import make_settings, running
from worker import Message, Stats, handler
from worker.ops.redis_safety import EVICTION, NO_PERSISTENCE, check_redis_safety
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def unsafe_server() -> Iterator[RedisServer]:
    """Evicting policy, no AOF and no snapshots: the worst case for a durable queue."""
    with RedisServer(extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")) as s:
        yield s


@pytest.fixture(scope="module")
def safe_server() -> Iterator[RedisServer]:
    """noeviction (the default) with AOF fsynced every second, as deploy/compose.yaml runs it."""
    with RedisServer(appendonly=True, extra_args=("--maxmemory-policy", "noeviction")) as s:
        yield s


class TestRedisSafety:
    async def test_evicting_server_without_persistence_is_flagged(
        self, unsafe_server: RedisServer
    ) -> None:
        """allkeys-lru and no persistence give two warnings and both flags at 1."""
        stats = Stats()
        async with Redis.from_url(unsafe_server.url) as redis:
            with structlog.testing.capture_logs() as logs:
                report = await check_redis_safety(redis, stats)
        assert report is not None
        assert report.policy == "allkeys-lru"
        assert stats.redis_unsafe == {EVICTION: 1, NO_PERSISTENCE: 1}
        warnings = [e for e in logs if e["event"] == "redis.unsafe"]
        assert {e["reason"] for e in warnings} == {EVICTION, NO_PERSISTENCE}
        assert all(e["log_level"] == "warning" for e in warnings)

    async def test_safe_server_is_not_flagged(self, safe_server: RedisServer) -> None:
        """noeviction with AOF on records both reasons as 0 and logs no warning."""
        stats = Stats()
        async with Redis.from_url(safe_server.url) as redis:
            with structlog.testing.capture_logs() as logs:
                await check_redis_safety(redis, stats)
        assert stats.redis_unsafe == {EVICTION: 0, NO_PERSISTENCE: 0}
        assert not [e for e in logs if e["log_level"] == "warning"]

    async def test_snapshots_alone_count_as_persistence(self) -> None:
        """A server with RDB save points but no AOF is not reported as unpersisted."""
        with RedisServer(extra_args=("--save", "900 1")) as server:
            stats = Stats()
            async with Redis.from_url(server.url) as redis:
                report = await check_redis_safety(redis, stats)
        assert report is not None and report.save
        assert stats.redis_unsafe[NO_PERSISTENCE] == 0

    async def test_disabled_config_command_is_tolerated(self) -> None:
        """With CONFIG renamed away, the check still reads INFO and reports the rest unknown."""
        args = ("--rename-command", "CONFIG", "", "--maxmemory-policy", "allkeys-lru")
        with RedisServer(extra_args=args) as server:
            stats = Stats()
            async with Redis.from_url(server.url) as redis:
                with structlog.testing.capture_logs() as logs:
                    report = await check_redis_safety(redis, stats)
        assert report is not None
        assert report.policy is None and report.aof is False
        assert stats.redis_unsafe == {}  # eviction unknowable; no AOF but RDB unknown
        unknown = [e for e in logs if e["event"] == "redis_safety.unknown"]
        assert unknown and set(unknown[0]["unchecked"]) == {EVICTION, NO_PERSISTENCE}

    async def test_unreachable_server_skips_the_check(self) -> None:
        """A server that went away yields None and a warning instead of an exception."""
        server = RedisServer().start()
        url = server.url
        server.cleanup()
        stats = Stats()
        async with Redis.from_url(url, socket_connect_timeout=1) as redis:
            with structlog.testing.capture_logs() as logs:
                assert await check_redis_safety(redis, stats) is None
        assert stats.redis_unsafe == {}
        assert [e for e in logs if e["event"] == "redis_safety.skipped"]

    async def test_worker_runs_the_check_at_start_up(
        self, unsafe_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A worker started against an evicting server exposes the flag in its stats."""

        @handler(stream=names["stream"])
        async def noop(msg: Message) -> None:
            return None

        settings = make_settings(unsafe_server.url, names["group"])
        async with running(settings, [noop]) as worker:
            assert worker.stats.redis_unsafe[EVICTION] == 1
            assert worker.stats.redis_unsafe[NO_PERSISTENCE] == 1
