"""`syncworker publish` follows the event convention, where the key is optional."""

from __future__ import annotations

import pytest
import redis as sync_redis

from worker.cli import main
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis


def test_publish_without_key(
    redis_server: RedisServer,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An event without --key is appended with type and data only."""
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
    stream = names["stream"]

    code = main(["publish", stream, "--type", "tick", "--data", '{"n": 1}'])

    out = capsys.readouterr()
    assert code == 0, out.err
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        ((entry_id, fields),) = client.xrange(stream)
    finally:
        client.close()
    assert out.out.strip() == entry_id
    assert fields == {"type": "tick", "data": '{"n":1}'}
