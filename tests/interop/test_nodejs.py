"""The Node.js example publisher (examples/nodejs, ioredis) feeds a real worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, handler
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "nodejs"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        # .ci/run installs both, so CI never takes this branch.
        pytest.skip("node and npm are not installed (apt-get install -y nodejs npm)")
    return node, npm


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """ioredis installed once per package.json into a cache beside pytest's own."""
    _, npm = _tools()
    manifest = (EXAMPLE / "package.json").read_bytes()
    cache = ROOT / ".pytest_cache" / "nodejs" / hashlib.sha256(manifest).hexdigest()[:16]
    modules = cache / "node_modules"
    if (modules / "ioredis" / "package.json").exists():
        return modules
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "package.json").write_bytes(manifest)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=110,
    )
    if done.returncode != 0:
        pytest.fail(
            f"npm install of examples/nodejs/package.json failed (is the npm registry "
            f"reachable? once installed, {cache} is reused offline):\n{done.stderr[-2000:]}"
        )
    return modules


async def _publish(node_modules: Path, url: str, stream: str, lines: list[dict[str, Any]]) -> str:
    node, _ = _tools()
    process = await asyncio.create_subprocess_exec(
        node,
        str(EXAMPLE / "publish.js"),
        stream,
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "REDIS_URL": url, "NODE_PATH": str(node_modules)},
    )
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out, err = await asyncio.wait_for(process.communicate(body), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


class TestNodePublisher:
    async def test_a_worker_handles_every_event_node_published(
        self,
        node_modules: Path,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
    ) -> None:
        """Each event publish.js writes reaches the handler with its type, key, data, version."""
        stream, group = names["stream"], names["group"]
        events = [
            {"type": "order.created", "key": "order-7", "version": 1, "data": {"order_id": 7}},
            {
                "type": "order.paid",
                "key": "order-7",
                "version": 2,
                "event_id": "evt-2",
                "data": {"order_id": 7, "total": "19.90", "note": "café ✓", "lines": [1, 2]},
            },
            {"type": "order.note", "data": "just text", "schema_version": 2},
        ]
        ids = (await _publish(node_modules, redis_server.url, stream, events)).split()
        seen: list[tuple[Any, ...]] = []

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            seen.append((msg.id, msg.type, msg.key, msg.data, msg.version, msg.schema_version))
            assert msg.event_id  # publish.js gives every event an id

        async with running(make_settings(redis_server.url, group), [record]):
            await eventually(lambda: len(seen) == len(events))
            await eventually(lambda: _settled(redis, stream, group))

        expected = [
            (i, e["type"], e.get("key"), e["data"], e.get("version"), e.get("schema_version"))
            for i, e in zip(ids, events, strict=True)
        ]
        assert sorted(seen) == expected
        ((_, paid),) = await redis.xrange(stream, ids[1], ids[1])
        assert paid[b"event_id"] == b"evt-2"
        assert await dead_letters(redis, stream) == []

    async def test_the_sample_event_validates_against_a_typed_handler(
        self,
        node_modules: Path,
        redis: Redis,
        redis_server: RedisServer,
        names: dict[str, str],
    ) -> None:
        """Run with no input, publish.js writes its sample order, which the model accepts."""
        from pydantic import BaseModel

        class Order(BaseModel):
            order_id: int
            customer: str
            amount_cents: int
            currency: str

        stream, group = names["stream"], names["group"]
        node, _ = _tools()
        done = await asyncio.to_thread(
            subprocess.run,
            [node, str(EXAMPLE / "publish.js"), stream],
            env={**os.environ, "REDIS_URL": redis_server.url, "NODE_PATH": str(node_modules)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        seen: list[Order] = []

        @handler(stream=stream, types=["order.completed"], model=Order)
        async def completed(msg: Message) -> None:
            seen.append(msg.event)

        async with running(make_settings(redis_server.url, group), [completed]):
            await eventually(lambda: len(seen) == 1)
        assert seen[0].order_id == 1001 and seen[0].currency == "EUR"


async def _settled(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0
