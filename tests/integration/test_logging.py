"""What a running worker logs about messages, failures and its own start-up."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import eventually, make_settings, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


class TestWorkerLogs:
    async def test_message_lines_carry_their_context(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Retries and dead letters log stream, id, handler, attempt and the error; handlers
        log through msg.log with the same context; the start-up line masks the password."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream, name="apply")
        async def apply(msg: Message) -> None:
            msg.log.info("apply.tried")
            raise ValueError("no such account")

        entry_id = await Publisher(redis).publish(stream, "t", {}, key="k")
        url = redis_server.url.replace("redis://", "redis://default:topsecret@")
        settings = make_settings(redis_server.url, group, max_attempts=2)
        settings = settings.model_copy(update={"redis_url": type(settings.redis_url)(url)})
        with capture_logs() as logs:
            async with running(settings, [apply]):
                await eventually(lambda: any(e["event"] == "message.dead_lettered" for e in logs))

        context = {"stream": stream, "message_id": entry_id, "handler": "apply"}
        retry = next(e for e in logs if e["event"] == "message.retry")
        assert retry.items() >= {**context, "attempt": 1, "log_level": "warning"}.items()
        assert retry["error_type"] == "ValueError" and retry["error"] == "no such account"
        dead = next(e for e in logs if e["event"] == "message.dead_lettered")
        assert dead.items() >= {**context, "attempt": 2, "log_level": "warning"}.items()
        assert dead["error_type"] == "ValueError"
        tried = [e for e in logs if e["event"] == "apply.tried"]
        assert [e["attempt"] for e in tried] == [1, 2]
        assert all(e.items() >= {**context, "group": group}.items() for e in tried)
        starting = next(e for e in logs if e["event"] == "worker.starting")
        assert "topsecret" not in repr(starting)
        assert starting["settings"]["redis_url"].startswith("redis://default:***@")
        assert starting["settings"]["max_attempts"] == 2
