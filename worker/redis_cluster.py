"""A throwaway Redis Cluster, or a Sentinel set-up, on free ports: for tests and benchmarks.

Built from `worker.redis_server.RedisServer`, so the same binary choice applies
(`SYNCWORKER_TEST_SERVER=valkey`), and only the processes started here are ever stopped,
each by its pid.

A cluster of 3 primaries starts in about a second; `replicas=1` adds a replica per primary
(6 processes, what `redis-cli --cluster create --cluster-replicas 1` builds). Slots are
assigned with CLUSTER ADDSLOTSRANGE and the nodes introduced with CLUSTER MEET through
redis-py, which is what `redis-cli --cluster create` does, without needing a `redis-cli` of
the same server family on the PATH.
"""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import redis as sync_redis

from worker.keys import key_slot
from worker.processes import ChildProcess, Managed
from worker.redis_server import RedisServer, free_port, server_binary

SLOTS = 16384


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers(Managed):
    """Starts `primaries` cluster-enabled servers (and `replicas` per primary), joins them.

    Args:
        primaries: primaries to start; the 16384 slots are split evenly among them.
        replicas: replicas per primary.
        binary: `redis`, `valkey` or a path; None reads `$SYNCWORKER_TEST_SERVER`.
    """

    def __init__(self, primaries: int = 3, *, replicas: int = 0, binary: str | None = None) -> None:
        self.primaries: list[RedisServer] = []
        self.replicas: list[RedisServer] = []
        for index in range(primaries * (1 + replicas)):
            server = RedisServer(
                cluster_port(),
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{index}.conf",
                    "--cluster-node-timeout", "1000",
                    "--cluster-require-full-coverage", "no",
                    # A replica syncs at once instead of after the default 5 s delay.
                    "--repl-diskless-sync-delay", "0",
                ),
                binary=binary,
            )  # fmt: skip
            (self.primaries if index < primaries else self.replicas).append(server)

    @property
    def servers(self) -> list[RedisServer]:
        return self.primaries + self.replicas

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming every primary as a start-up node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.primaries)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.pid is not None]

    def start(self, timeout: float = 30.0) -> Self:
        """Start every server, assign the slots, attach the replicas, wait for cluster_state:ok."""
        try:
            for server in self.servers:
                server.start()
            self._join(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _join(self, timeout: float) -> None:
        clients = [sync_redis.Redis(port=s.port) for s in self.servers]
        try:
            share = SLOTS // len(self.primaries)
            for index, client in enumerate(clients[: len(self.primaries)]):
                last = SLOTS - 1 if index == len(self.primaries) - 1 else (index + 1) * share - 1
                client.cluster("ADDSLOTSRANGE", index * share, last)
            for client in clients[1:]:
                client.cluster("MEET", "127.0.0.1", self.servers[0].port)
            deadline = time.monotonic() + timeout
            ids = [self._node_id(c) for c in clients[: len(self.primaries)]]
            for index, client in enumerate(clients[len(self.primaries) :]):
                primary = ids[index % len(ids)]
                self._until(deadline, lambda c=client, p=primary: _knows(c, p))
                client.cluster("REPLICATE", primary)
            for client in clients:
                self._until(deadline, lambda c=client: _state_ok(c, len(self.servers)))
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _node_id(client: sync_redis.Redis) -> str:
        reply = client.cluster("MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    @staticmethod
    def _until(deadline: float, done: object) -> None:
        while not done():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok in time")
            time.sleep(0.05)

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Wait until every replica's link to its primary is up (its first sync done)."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            with sync_redis.Redis(port=replica.port, socket_timeout=2) as client:
                self._until(deadline, lambda c=client: _link_up(c))

    def primary_of(self, key: str) -> RedisServer:
        """The live server that serves `key`'s slot as its primary now (after failovers too).

        Each node is asked about itself: another node's view may lag behind a failover.
        """
        slot = key_slot(key)
        for server in self.servers:
            if server.pid is not None and self._serves(server, slot):
                return server
        raise RuntimeError(f"no live node serves slot {slot}")

    @staticmethod
    def _serves(server: RedisServer, slot: int) -> bool:
        with sync_redis.Redis(port=server.port, socket_timeout=2) as client:
            spans = client.execute_command("CLUSTER", "SLOTS")
        return any(
            start <= slot <= end and int(nodes[0][1]) == server.port for start, end, *nodes in spans
        )

    def fail_over(self, primary: RedisServer, timeout: float = 30.0) -> RedisServer:
        """SIGKILL `primary` and wait until a replica has taken over all its slots.

        Returns:
            the promoted replica. The killed server stays down (its pid is gone).
        """
        with sync_redis.Redis(port=primary.port, socket_timeout=2) as client:
            node_id = self._node_id(client)
            owned = [(s, e) for s, e, *nodes in client.execute_command("CLUSTER", "SLOTS")
                     if int(nodes[0][1]) == primary.port]  # fmt: skip
        primary.stop(signal.SIGKILL)
        survivors = [s for s in self.servers if s.pid is not None]
        deadline = time.monotonic() + timeout
        promoted: list[RedisServer] = []

        def taken_over() -> bool:
            for server in survivors:
                try:
                    with sync_redis.Redis(port=server.port, socket_timeout=1) as client:
                        role = client.execute_command("ROLE")[0]
                        myid = self._node_id(client)
                        state = client.cluster("INFO").get("cluster_state")
                except sync_redis.RedisError:
                    return False
                if state != "ok":
                    return False
                if role in (b"master", "master") and myid != node_id and server in self.replicas:
                    with sync_redis.Redis(port=server.port, socket_timeout=1) as client:
                        slots = client.execute_command("CLUSTER", "SLOTS")
                    mine = {(s, e) for s, e, *nodes in slots if int(nodes[0][1]) == server.port}
                    if all(span in mine for span in owned):
                        promoted[:] = [server]
            return bool(promoted)

        self._until(deadline, taken_over)
        return promoted[0]

    def cut_replication(self, primary: RedisServer) -> RedisServer:
        """Stop `primary`'s replica from replicating it, for a test of what a failover loses.

        The replica's link is dropped, and the replica is told to log in as a user that does
        not exist, so it cannot reconnect; the primary and the cluster bus are untouched.
        From now on every write to `primary` is lost if its replica is promoted (the replica
        still may be, for `cluster-replica-validity-factor` times the node timeout).

        Returns:
            the replica that was cut off.
        """
        with sync_redis.Redis(port=primary.port, socket_timeout=2) as client:
            myid = self._node_id(client)
            nodes = client.cluster("NODES")  # parsed: {"host:port": {"master_id": ...}}
        ports = {int(address.rsplit(":", 1)[1].split("@")[0]) for address, node in nodes.items()
                 if node["master_id"] == myid}  # fmt: skip
        for replica in self.servers:
            if replica.pid is None or replica.port not in ports:
                continue
            with sync_redis.Redis(port=replica.port, socket_timeout=2) as client:
                client.config_set("masteruser", "syncworker-cut-off")
                client.config_set("masterauth", "cut-off")
            with sync_redis.Redis(port=primary.port, socket_timeout=2) as client:
                client.client_kill_filter(_type="replica")
            return replica
        raise RuntimeError(f"no live replica replicates :{primary.port} (its replicas: {ports})")

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


def _knows(client: sync_redis.Redis, node_id: str) -> bool:
    nodes = client.cluster("NODES")  # redis-py parses it: {address: {"node_id": ...}}
    return any(node["node_id"] == node_id for node in nodes.values())


def _link_up(replica: sync_redis.Redis) -> bool:
    return bool(replica.info("replication").get("master_link_status") == "up")


def _state_ok(client: sync_redis.Redis, nodes: int) -> bool:
    fields = client.cluster("INFO")  # redis-py parses it into a dict
    known = str(fields.get("cluster_known_nodes"))
    return fields.get("cluster_state") == "ok" and known == str(nodes)


class Sentinel(ChildProcess):
    """One sentinel process on a free port, with its own config file (sentinels rewrite it).

    Args:
        monitor: (service name, primary port) to watch, with a quorum of 2.
        password: the sentinel's own `requirepass`; it also logs in to its peers with it.
        auth_pass: the password of the primary and replicas it watches (`sentinel auth-pass`).
        extra_config: more lines for its config file (`tls-port ...`, say).
    """

    def __init__(
        self,
        monitor: tuple[str, int],
        *,
        binary: str | None = None,
        password: str | None = None,
        auth_pass: str | None = None,
        extra_config: str = "",
    ) -> None:
        self.binary = server_binary(binary)
        self.port = free_port()
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="syncworker-sentinel-"))
        service, primary = monitor
        self.config = self.dir / "sentinel.conf"
        config = (
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        if auth_pass is not None:
            config += f"sentinel auth-pass {service} {_quoted(auth_pass)}\n"
        if password is not None:
            config += f"requirepass {_quoted(password)}\n"
        self.config.write_text(config + extra_config)

    def client(self, **options: Any) -> sync_redis.Redis:
        """A synchronous client of this sentinel, logged in when it has a password."""
        return sync_redis.Redis(port=self.port, password=self.password, **options)

    def start(self, timeout: float = 10.0) -> Self:
        self._spawn([self.binary, str(self.config), "--sentinel"], self._answers, timeout)
        return self

    def _answers(self) -> bool:
        try:
            with self.client(socket_timeout=0.5) as client:
                return bool(client.ping())
        except sync_redis.RedisError:
            return False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelServers(Managed):
    """A primary, `replicas` replicas of it and `sentinels` sentinels, all on free ports.

    Args:
        service: the name the sentinels know the primary by.
        binary: `redis`, `valkey` or a path; None reads `$SYNCWORKER_TEST_SERVER`.
        password: the `requirepass` of the primary and replicas (and their `masterauth`, so
            that a replica, or a demoted primary, can sync); the sentinels get it as
            `sentinel auth-pass`.
        sentinel_password: the sentinels' own `requirepass`.
    """

    def __init__(
        self,
        service: str = "syncworker",
        *,
        replicas: int = 1,
        sentinels: int = 3,
        binary: str | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.service = service
        self.password = password
        # Without a delay a replica syncs at once, instead of after the default 5 s during
        # which the primary waits for more replicas to share one diskless transfer.
        quick: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
        if password is not None:
            quick += ("--requirepass", password, "--masterauth", password)
        self.primary = RedisServer(binary=binary, extra_args=quick)
        self.replicas = [
            RedisServer(extra_args=(*quick, "--replicaof", "127.0.0.1", str(self.primary.port)),
                        binary=binary)
            for _ in range(replicas)
        ]  # fmt: skip
        self.sentinels = [
            Sentinel(
                (service, self.primary.port),
                binary=binary,
                password=sentinel_password,
                auth_pass=password,
            )
            for _ in range(sentinels)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, timeout: float = 30.0) -> Self:
        """Start everything and wait until every sentinel knows every replica."""
        try:
            for server in [self.primary, *self.replicas]:
                server.start()
            for sentinel in self.sentinels:
                sentinel.start()
            deadline = time.monotonic() + timeout
            for sentinel in self.sentinels:
                client = sentinel.client()
                try:
                    while len(client.sentinel_slaves(self.service)) < len(self.replicas):
                        if time.monotonic() > deadline:
                            raise RuntimeError("the sentinels did not find the replicas in time")
                        time.sleep(0.1)
                finally:
                    client.close()
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Wait until every replica's link to the primary is up (its first sync done)."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            with sync_redis.Redis(
                port=replica.port, password=self.password, socket_timeout=2
            ) as client:
                while client.info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica :{replica.port} did not sync in time")
                    time.sleep(0.05)

    def primary_port(self) -> int:
        """The primary's port as the first sentinel names it now."""
        with self.sentinels[0].client(socket_timeout=2) as client:
            address: Any = client.sentinel_get_master_addr_by_name(self.service)
        return int(address[1])

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        for server in [self.primary, *self.replicas]:
            server.cleanup()


def _quoted(value: str) -> str:
    """A value for a sentinel config file: double-quoted, with `\\` and `"` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["RedisClusterServers", "SentinelServers", "free_port"]
