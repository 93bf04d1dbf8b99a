"""Partition naming and the key hash, which producers in any language must reproduce."""

from __future__ import annotations

import json
import zlib

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from handlers.relay import Relay
from worker import Message, Publisher, handler
from worker.cli import main
from worker.errors import ConfigError
from worker.partitions import logical_of, partition_name, partition_of, stream_for
from worker.redis_server import RedisServer
from worker.registry import handlers_from_settings
from worker.runtime.leases import fair_share
from worker.settings import WorkerSettings

PLUGIN = "tests.partitions.plugins:VersionCheck"


def test_partition_is_crc32_of_the_key_bytes_mod_n() -> None:
    # Known CRC-32 (IEEE) values: the same numbers Go's crc32.ChecksumIEEE and Node's
    # zlib.crc32 give, so producers elsewhere land on the same partition.
    for key in ("order-42", "o-1", "ключ", "x" * 300):
        assert partition_of(key, 8) == zlib.crc32(key.encode()) % 8
    assert partition_of(b"order-42", 8) == partition_of("order-42", 8)
    assert partition_of("123456789", 1 << 32) == 0xCBF43926  # the CRC-32 check value
    assert partition_of(None, 8) == partition_of("", 8) == 0


def test_names_are_their_own_hash_tags_and_map_back() -> None:
    assert partition_name("orders", 3) == "{orders:3}"
    assert logical_of("{orders:3}") == ("orders", 3)
    assert logical_of("orders") == ("orders", None)
    assert stream_for("orders", "o-1", None) == "orders"
    assert stream_for("orders", "o-1", 4) == f"{{orders:{zlib.crc32(b'o-1') % 4}}}"


def test_fair_share_is_the_ceiling() -> None:
    assert [fair_share(8, m) for m in (1, 2, 3, 4, 8, 9)] == [8, 4, 3, 2, 1, 1]


def test_routes_and_decorator_expand_to_partitions() -> None:
    @handler(stream="orders", partitions=3, ordered="strict")
    async def apply(msg: Message) -> None:
        pass

    assert apply.streams == ("{orders:0}", "{orders:1}", "{orders:2}")
    assert apply.logical_streams == ("orders",)
    with pytest.raises(ValueError, match="partitions"):
        handler(stream="orders", ordered=True)
    with pytest.raises(ValueError, match="braces"):
        handler(stream="{orders}", partitions=2)

    settings = WorkerSettings(
        routes=[
            {
                "stream": "payments",
                "handler": "tests.partitions.plugins:VersionCheck",
                "options": {"prefix": "p"},
                "partitions": 2,
                "ordered": True,
            }
        ]
    )
    (bound,) = handlers_from_settings(settings)
    assert bound.streams == ("{payments:0}", "{payments:1}")
    assert bound.ordered is True
    unordered = WorkerSettings(
        routes=[
            {"stream": "s", "handler": "tests.partitions.plugins:VersionCheck", "ordered": True}
        ]
    )
    with pytest.raises(ConfigError, match="partitions"):
        handlers_from_settings(unordered)


async def test_publisher_and_relay_write_to_the_keys_partition(
    redis: Redis, names: dict[str, str]
) -> None:
    stream = names["stream"]
    pub = Publisher(redis, partitions={stream: 4})
    await pub.publish(stream, "t", {}, key="o-1")
    await pub.publish(stream, "t", {})  # no key: partition 0
    assert await redis.xlen(stream_for(stream, "o-1", 4)) >= 1
    assert await redis.xlen(partition_name(stream, 0)) >= 1
    assert await redis.exists(stream) == 0

    relay = Relay(to=[{"stream": stream + "-out", "partitions": 4}]).bind([stream])
    assert isinstance(relay, Relay)
    relay.use(redis)
    fields = {b"type": b"t", b"key": b"o-9", b"data": b"{}"}
    await relay.handle(Message(stream, "1-1", fields, 1, names["group"]))
    assert await redis.xlen(stream_for(stream + "-out", "o-9", 4)) == 1


def test_cli_publishes_to_the_partition_and_status_sums_them(
    redis_server: RedisServer,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SYNCWORKER_REDIS_URL", redis_server.url)
    stream, group = names["stream"], names["group"]
    for key in ("a", "b", "c", "d", "e"):
        argv = ["publish", stream, "--partitions", "3", "--type", "t", "--key", key]
        assert main([*argv, "--data", "{}"]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [p[1] for p in printed] == [stream_for(stream, k, 3) for k in "abcde"]
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        for i in range(3):
            client.xgroup_create(partition_name(stream, i), group, id="0", mkstream=True)
    finally:
        client.close()
    monkeypatch.setenv(
        "SYNCWORKER_ROUTES",
        json.dumps(
            [
                {
                    "stream": stream,
                    "handler": "tests.partitions.plugins:VersionCheck",
                    "partitions": 3,
                }
            ]
        ),
    )
    assert main(["status", "--group", group, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["streams"]) == 3
    (total,) = report["logical_streams"]
    assert (total["stream"], total["partitions"], total["length"], total["lag"]) == (
        stream,
        3,
        5,
        5,
    )
    assert main(["publish", "{bad}", "--partitions", "2", "--type", "t", "--data", "{}"]) == 2


async def test_deliver_runs_a_partitioned_handler_on_any_stream_name() -> None:
    from worker.testing import deliver

    seen: list[str] = []

    @handler(stream="orders", partitions=4, ordered=True)
    async def apply(msg: Message) -> None:
        seen.append(msg.stream)

    assert (await deliver(apply, type="t", key="k")).outcome == "ok"
    assert (await deliver(apply, stream="orders", type="t", key="k")).outcome == "ok"
    assert seen == ["{orders:0}", "orders"]
