"""Sentinel configured through settings, with sentinels and data nodes behind passwords.

One set-up for the module: a primary and a replica with `requirepass` (and `masterauth`),
and two sentinels with a `requirepass` of their own and `sentinel auth-pass` for the
primary. Nothing here kills a server, so the tests share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis
from structlog.testing import capture_logs

from tests.helpers import FAST, WorkerProcess, eventually, running
from worker import Message, handler
from worker.cli import main
from worker.errors import StartupError
from worker.redis_cluster import SentinelServers
from worker.settings import WorkerSettings

pytestmark = [pytest.mark.redis, pytest.mark.sentinel]

DATA_PW = "d@ta Pw#1"
SENTINEL_PW = "s3ntinel Pw#2"
WRONG_PW = "wr0ng Pw#3"


def leaks(text: str) -> bool:
    return any(pw in text for pw in (DATA_PW, SENTINEL_PW, WRONG_PW, "Pw#"))


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelServers]:
    try:
        servers = SentinelServers(
            replicas=1, sentinels=2, password=DATA_PW, sentinel_password=SENTINEL_PW
        ).start()
        servers.wait_synced()  # the replica logged in to the primary with masterauth
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=3)
    yield servers
    servers.cleanup()


@pytest.fixture
def primary(sentinels: SentinelServers) -> Iterator[sync_redis.Redis]:
    with sync_redis.Redis(port=sentinels.primary.port, password=DATA_PW) as client:
        yield client


def addresses(sentinels: SentinelServers) -> list[str]:
    return [f"127.0.0.1:{s.port}" for s in sentinels.sentinels]


def settings_for(sentinels: SentinelServers, group: str, **overrides: Any) -> WorkerSettings:
    """Sentinels, service and both passwords as settings; no URL at all."""
    values: dict[str, Any] = {
        **FAST,
        "group": group,
        "redis_sentinels": addresses(sentinels),
        "redis_sentinel_service": sentinels.service,
        "redis_sentinel_password": SENTINEL_PW,
        "redis_password": DATA_PW,
        "redis_timeout": 2.0,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@pytest.fixture
def env(sentinels: SentinelServers, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The same settings as environment variables, for the commands."""
    for name in list(os.environ):
        if name.startswith("SYNCWORKER_"):
            monkeypatch.delenv(name)
    values = {
        "SYNCWORKER_REDIS_SENTINELS": ",".join(addresses(sentinels)),
        "SYNCWORKER_REDIS_SENTINEL_SERVICE": sentinels.service,
        "SYNCWORKER_REDIS_SENTINEL_PASSWORD": SENTINEL_PW,
        "SYNCWORKER_REDIS_PASSWORD": DATA_PW,
        "SYNCWORKER_REDIS_TIMEOUT": "2",
        "SYNCWORKER_HANDLERS": "tests.integration.plugins:noop",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


async def test_a_worker_configured_by_the_settings_handles_messages(
    sentinels: SentinelServers, primary: sync_redis.Redis, names: dict[str, str]
) -> None:
    """It finds the primary through the password-protected sentinels and logs in to it;
    the start-up line shows where it connects, and no password."""
    stream = names["stream"]
    seen: list[int] = []

    @handler(stream=stream)
    async def record(msg: Message) -> None:
        seen.append(msg.data["n"])  # type: ignore[index]

    for n in range(5):
        primary.xadd(stream, {"type": "t", "data": f'{{"n": {n}}}'})
    settings = settings_for(sentinels, names["group"])
    with capture_logs() as logs:
        async with running(settings, [record]):
            await eventually(lambda: sorted(seen) == list(range(5)))
            await eventually(
                lambda: primary.xpending(stream, names["group"])["pending"] == 0  # type: ignore[index]
            )
    starting = next(e for e in logs if e["event"] == "worker.starting")
    hosts = ",".join(addresses(sentinels))
    assert starting["redis_url"] == f"redis+sentinel://{hosts}/{sentinels.service}/0"
    assert starting["settings"]["redis_sentinel_password"] == "***"
    assert not leaks(repr(logs))


@pytest.mark.parametrize("password", [WRONG_PW, None], ids=["wrong", "missing"])
async def test_a_refused_sentinel_login_ends_the_start_up(
    sentinels: SentinelServers, names: dict[str, str], password: str | None
) -> None:
    """Not retried for ever as if the sentinels were down: one clear line, no password."""
    stream = names["stream"]

    @handler(stream=stream)
    async def record(msg: Message) -> None:
        pass

    settings = settings_for(sentinels, names["group"], redis_sentinel_password=password)
    with capture_logs() as logs, pytest.raises(StartupError):
        async with running(settings, [record]):
            pass
    failed = next(e for e in logs if e["event"] == "worker.start_failed")
    assert "the sentinels refused the login" in failed["error"]
    assert "SYNCWORKER_REDIS_SENTINEL_PASSWORD" in failed["error"]
    assert not leaks(repr(logs))


async def test_syncworker_run_exits_1_on_a_refused_sentinel_login(
    sentinels: SentinelServers, names: dict[str, str]
) -> None:
    worker = WorkerProcess(
        "redis:///0",
        names["group"],
        names["stream"],
        f"c-{names['suffix']}",
        SYNCWORKER_REDIS_SENTINELS=",".join(addresses(sentinels)),
        SYNCWORKER_REDIS_SENTINEL_SERVICE=sentinels.service,
        SYNCWORKER_REDIS_SENTINEL_PASSWORD=WRONG_PW,
        SYNCWORKER_REDIS_PASSWORD=DATA_PW,
        SYNCWORKER_REDIS_TIMEOUT="2",
    )
    await worker.start()
    assert await worker.wait() == 1
    output = worker.output()
    assert "the sentinels refused the login" in output and not leaks(output)


def test_commands_work_through_the_settings(
    sentinels: SentinelServers,
    env: dict[str, str],
    names: dict[str, str],
    primary: sync_redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check, publish and status reach the primary the sentinels name; output masked."""
    stream = names["stream"]
    assert main(["check"]) == 0
    assert main(["publish", stream, "--type", "t", "--data", '{"n": 1}']) == 0
    assert main(["status", "--stream", stream, "--group", names["group"]]) == 0
    out = capsys.readouterr()
    hosts = ",".join(addresses(sentinels))
    assert f"Redis at redis+sentinel://{hosts}/{sentinels.service}/0 answers" in out.out
    primary_at = f"primary at 127.0.0.1:{sentinels.primary.port}"
    assert f"(topology: Sentinel, service {sentinels.service}, {primary_at})" in out.out
    assert primary.xlen(stream) == 1
    assert not leaks(out.out + out.err)


def test_a_sentinel_url_takes_the_sentinel_password_too(
    sentinels: SentinelServers,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The URL form with the data password in it; the sentinels' from the setting."""
    monkeypatch.delenv("SYNCWORKER_REDIS_SENTINELS")
    monkeypatch.delenv("SYNCWORKER_REDIS_SENTINEL_SERVICE")
    monkeypatch.delenv("SYNCWORKER_REDIS_PASSWORD")
    hosts = ",".join(addresses(sentinels))
    url = f"redis+sentinel://:{DATA_PW}@{hosts}/{sentinels.service}"
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
    assert main(["check"]) == 0
    out = capsys.readouterr()
    assert f"Redis at redis+sentinel://:***@{hosts}/{sentinels.service} answers" in out.out
    assert not leaks(out.out + out.err)


@pytest.mark.parametrize("command", [["check"], ["dlq", "list", "s"]])
def test_a_refused_sentinel_login_is_exit_1_in_the_commands(
    command: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SYNCWORKER_REDIS_SENTINEL_PASSWORD", WRONG_PW)
    code = main(command)
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "the sentinels refused the login" in err and not leaks(err)
