"""Passwords with every URL-special character reach Redis whole and never reach the output."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis as sync_redis

from tests.unit.test_secrets import PASSWORD, leaks
from worker.cli import main
from worker.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

_users = itertools.count()


@pytest.fixture
def app_user(redis_server: RedisServer) -> Iterator[str]:
    """An ACL user whose password holds every URL-special character."""
    name = f"app{next(_users)}"
    admin = sync_redis.Redis.from_url(redis_server.url)
    admin.acl_setuser(
        name, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
    )
    yield name
    admin.acl_deluser(name)
    admin.close()


class TestPasswordsInUrls:
    @pytest.mark.parametrize("encoded", [False, True], ids=["raw", "percent-encoded"])
    def test_check_authenticates_and_masks(
        self,
        encoded: bool,
        app_user: str,
        redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`check` logs in with the password as written, and prints the URL masked."""
        password = quote(PASSWORD, safe="") if encoded else PASSWORD
        url = f"redis://{app_user}:{password}@127.0.0.1:{redis_server.port}/0"
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
        monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")

        code = main(["check"])

        out = capsys.readouterr()
        assert code == 0, out.err
        assert f"redis://{app_user}:***@127.0.0.1:{redis_server.port}/0" in out.out
        assert not leaks(out.out + out.err)

    def test_unreachable_redis_error_is_masked(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The one-line error about an unreachable server shows the URL masked."""
        url = f"redis://app:{PASSWORD}@127.0.0.1:{free_port()}/0"
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
        monkeypatch.setenv("SYNCWORKER_REDIS_TIMEOUT", "1")

        code = main(["status", "--stream", "s"])

        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "redis://app:***@127.0.0.1" in err and not leaks(err)

    @pytest.mark.parametrize("command", [["check"], ["status", "--stream", "s"]])
    def test_refused_login_is_exit_1_everywhere(
        self,
        command: list[str],
        app_user: str,
        redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A wrong password is Redis refusing: exit 1 in every command, one masked line."""
        url = f"redis://{app_user}:{PASSWORD}x@127.0.0.1:{redis_server.port}/0"
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
        monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")

        code = main(command)

        err = capsys.readouterr().err
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "refused" in err and not leaks(err)


class TestRunningWorker:
    async def test_logs_and_endpoints_never_show_the_password(
        self, app_user: str, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A worker logged in with a special password: no log line or endpoint shows it."""
        from structlog.testing import capture_logs

        from tests.helpers import make_settings, running
        from tests.ops_helpers import http_get
        from worker import Message, handler
        from worker.ops.server import OpsServer

        stream = names["stream"]

        @handler(stream=stream)
        async def noop(msg: Message) -> None:
            pass

        url = f"redis://{app_user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
        ops = OpsServer(host="127.0.0.1", port=0)
        bodies = []
        with capture_logs() as logs:
            async with running(make_settings(url, names["group"]), [noop], services=[ops]):
                for path in ("/metrics", "/healthz", "/readyz", "/nope"):
                    bodies.append((await http_get(ops.port, path))[1].decode())
        assert not leaks(repr(logs)) and not leaks("".join(bodies))
        assert any(e.get("redis_url", "").startswith(f"redis://{app_user}:***@") for e in logs)
