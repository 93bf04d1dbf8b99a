"""Shared fixtures: a real redis-server per session, fresh names per test, a worker runner."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.helpers import WorkerProcess
from worker.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests that kill or restart Redis start their own."""
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)  # never skip silently: fail with the fix
    yield server
    server.cleanup()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def reap_workers() -> AsyncIterator[None]:
    """Kill (by pid) any worker subprocess a failed test left running."""
    yield
    while WorkerProcess.started:
        await WorkerProcess.started.pop().kill()


@pytest.fixture
def names() -> dict[str, str]:
    """Fresh stream and group names, so tests never see each other's data."""
    suffix = uuid.uuid4().hex[:10]
    return {"stream": f"test:{suffix}", "group": f"group-{suffix}", "suffix": suffix}
