"""Cluster and Sentinel URLs, their masking, the clients they give, and the key layout."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot as redis_py_slot

from worker.connection import connect
from worker.keys import colocated, derived, hash_tag, key_slot, same_slot
from worker.redis_url import mask_url, parse
from worker.settings import WorkerSettings


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "topology", "tls", "addresses", "service", "db"),
        [
            ("redis://h:1/2", "standalone", False, [("h", 1)], None, 2),
            ("redis+cluster://a:7000,b:7001", "cluster", False, [("a", 7000), ("b", 7001)],
             None, 0),
            ("rediss+cluster://u:p@[::1]:7000,h", "cluster", True, [("::1", 7000), ("h", 6379)],
             None, 0),
            ("redis+sentinel://s1,s2:5000/mymaster/3", "sentinel", False,
             [("s1", 26379), ("s2", 5000)], "mymaster", 3),
        ],
    )  # fmt: skip
    def test_topology_and_parts(
        self,
        url: str,
        topology: str,
        tls: bool,
        addresses: list[tuple[str, int]],
        service: str | None,
        db: int,
    ) -> None:
        """The scheme names the topology; the authority lists every node."""
        parsed = parse(url)
        assert (parsed.topology, parsed.tls, parsed.addresses) == (topology, tls, addresses)
        assert (parsed.service_name, parsed.db) == (service, db)

    @pytest.mark.parametrize(
        ("url", "error"),
        [
            ("redis+cluster://a:1/3", "only database 0"),
            ("redis+cluster://a:1,,b:2", "empty address"),
            ("redis+cluster://a:99999", "port must be a number"),
            ("redis+sentinel://a:1", "needs the service name"),
            ("redis+sentinel://a:1/m/x", "only a database number"),
            ("redis+mesh://a:1", "must start with"),
        ],
    )
    def test_mistakes_are_named(self, url: str, error: str) -> None:
        with pytest.raises(ValueError, match=error):
            parse(url)

    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            ("redis+cluster://u:s3cr#t@a:1,b:2", "redis+cluster://u:***@a:1,b:2"),
            ("rediss+cluster://:p@ss@a:1", "rediss+cluster://:***@a:1"),
            ("redis+sentinel://u:pw@s1:26379,s2/mymaster/1", "redis+sentinel://u:***@s1:26379,s2/mymaster/1"),
            ("redis+sentinel://s1/m?password=x", "redis+sentinel://s1/m?password=***"),
        ],
    )  # fmt: skip
    def test_credentials_are_masked(self, url: str, masked: str) -> None:
        assert mask_url(url) == masked


class TestClients:
    async def test_a_cluster_url_gives_a_cluster_client_with_every_start_node(self) -> None:
        """No connection is made until the first command."""
        client = connect(WorkerSettings(redis_url="redis+cluster://u:pw@127.0.0.1:7000,h2:7001"))
        try:
            assert isinstance(client, RedisCluster)
            nodes = client.nodes_manager.startup_nodes.values()
            assert {(n.host, n.port) for n in nodes} == {("127.0.0.1", 7000), ("h2", 7001)}
            assert {n.connection_kwargs["password"] for n in nodes} == {"pw"}
        finally:
            await client.aclose()

    async def test_a_sentinel_url_asks_the_sentinels_for_the_service(self) -> None:
        client = connect(WorkerSettings(redis_url="redis+sentinel://s1:26379,s2/orders-main/2"))
        try:
            pool = client.connection_pool
            assert isinstance(pool, SentinelConnectionPool)
            assert pool.service_name == "orders-main"
            assert pool.connection_kwargs["db"] == 2
            hosts = [(s.connection_pool.connection_kwargs["host"],
                      s.connection_pool.connection_kwargs["port"])
                     for s in pool.sentinel_manager.sentinels]  # fmt: skip
            assert hosts == [("s1", 26379), ("s2", 26379)]
        finally:
            await client.aclose()


class TestKeyLayout:
    @pytest.mark.parametrize("key", ["orders", "{orders}:dlq", "{t1}.orders", "a{b}c", "{}x",
                                     "a}b", "x{y", "a{}b{c}"])  # fmt: skip
    def test_slots_match_redis_py(self, key: str) -> None:
        assert key_slot(key) == redis_py_slot(key.encode())

    @pytest.mark.parametrize(
        ("stream", "cluster", "expected"),
        [
            ("orders", False, "orders:dlq"),  # off a cluster: the names it always had
            ("orders", True, "{orders}:dlq"),
            ("{tenant1}.orders", True, "{tenant1}.orders:dlq"),  # the user's tag is kept
            ("a}b", True, "a}b:dlq"),  # no tag can name its slot
            ("{}z", True, "{}z:dlq"),  # nor here: an empty tag is none
        ],
    )
    def test_derived_keys(self, stream: str, cluster: bool, expected: str) -> None:
        assert derived(stream, ":dlq", cluster) == expected

    @pytest.mark.parametrize("stream", ["orders", "{tenant1}.orders", "x{y"])
    def test_derived_keys_share_the_streams_slot_on_a_cluster(self, stream: str) -> None:
        assert same_slot(stream, derived(stream, ":dlq", True), colocated(stream, "m:1"))

    def test_settings_follow_the_topology(self) -> None:
        standalone = WorkerSettings(redis_url="redis://h:1")
        cluster = WorkerSettings(redis_url="redis+cluster://h:1")
        assert standalone.dead_letter_stream("orders") == "orders:dlq"
        assert cluster.dead_letter_stream("orders") == "{orders}:dlq"

    def test_hash_tag(self) -> None:
        assert [hash_tag(k) for k in ("a{b}c", "{}x", "a", "{a}{b}")] == ["b", None, None, "a"]

    def test_a_stray_brace_cannot_be_colocated(self) -> None:
        with pytest.raises(ValueError, match="stray"):
            colocated("a}b", "m")
