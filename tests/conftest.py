"""Shared fixtures: a real redis-server per session, fresh names per test, a worker runner."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings
from redis.asyncio import Redis

from tests.helpers import WorkerProcess
from worker.redis_server import RedisServer

# No per-example deadline (hypothesis's default is 200 ms): how long an example takes says
# nothing about the property, and a machine busy with a second xdist process or other runs
# stretched one to 370 ms ("FlakyFailure ... DeadlineExceeded").
settings.register_profile("syncworker", deadline=None)
settings.load_profile("syncworker")

SERIAL_DIRS = ("chaos", "cluster", "sentinel")
"""Directories whose tests `make test` runs after the others, alone (docs/testing.md): the
chaos scenarios measure overlaps and takeovers to the tenth of a second with four workers
each, and the cluster and Sentinel set-ups are shared by a session and killed on purpose."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of `SERIAL_DIRS` `serial`; a test elsewhere can carry the mark itself."""
    root = config.rootpath / "tests"
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if parts and parts[0] in SERIAL_DIRS:
            item.add_marker(pytest.mark.serial)


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
