"""A primary with replicas, and Sentinels watching them: real processes on free ports.

For tests and benchmarks of what replication and failover do to published events, like
`worker.redis_server.RedisServer` for a single server. Every process is started here and
stopped here, by pid.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType

from redis import Redis

from worker.redis_server import RedisServer, free_port, server_binary

SERVICE = "syncworker"
"""The name the Sentinels monitor the primary under (`redis+sentinel://.../<service>`)."""


def replication_info(port: int) -> dict[str, str]:
    """`INFO replication` of the server on `port`, as text fields."""
    with Redis(port=port, socket_timeout=2) as client:
        info = client.info("replication")
    return {k: str(v) for k, v in info.items()}


def _link_up(port: int) -> bool:
    return replication_info(port).get("master_link_status") == "up"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check()` until it is true; errors (a server not up yet, LOADING) count as no."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class ReplicatedRedis:
    """One primary and `replicas` replicas of it, replication link up.

    Args:
        replicas: how many replicas to start.
        binary: `redis`, `valkey` or a path; None reads `$SYNCWORKER_TEST_SERVER`.
    """

    def __init__(self, replicas: int = 1, *, binary: str | None = None) -> None:
        # Without a delay a replica syncs at once, instead of after the default 5 s during
        # which the primary waits for more replicas to share one diskless transfer.
        quick = ("--repl-diskless-sync-delay", "0")
        self.primary = RedisServer(binary=binary, extra_args=quick)
        port = self.primary.port
        self.replicas = [
            RedisServer(binary=binary, extra_args=(*quick, "--replicaof", "127.0.0.1", str(port)))
            for _ in range(replicas)
        ]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def start(self, timeout: float = 15.0) -> ReplicatedRedis:
        for server in self.servers:
            server.start()
        for replica in self.replicas:
            wait_until(partial(_link_up, replica.port), timeout, f"replica :{replica.port}")
        return self

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()

    def __enter__(self) -> ReplicatedRedis:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class SentinelSetup:
    """A primary, its replicas and `sentinels` Sentinels (quorum: a majority) watching it.

    The Sentinels judge the primary down after `down_after` seconds without an answer, so a
    killed primary is replaced within a few seconds.
    """

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        down_after: float = 1.0,
        binary: str | None = None,
    ) -> None:
        self.group = ReplicatedRedis(replicas, binary=binary)
        self.binary = server_binary(binary)
        self.down_after = down_after
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="syncworker-sentinel-"))
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The `redis+sentinel://` URL of the monitored service."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 20.0) -> SentinelSetup:
        self.group.start()
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.group.primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {int(self.down_after * 1000)}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._processes.append(
                subprocess.Popen(
                    [self.binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            wait_until(partial(self._sees_everyone, port), timeout, f"sentinel :{port}")
        return self

    def _sees_everyone(self, port: int) -> bool:
        with Redis(port=port, socket_timeout=2) as client:
            primary = client.sentinel_master(SERVICE)
        others = int(primary["num-other-sentinels"])
        return others == len(self.sentinel_ports) - 1 and int(primary["num-slaves"]) == len(
            self.group.replicas
        )

    def primary_port(self) -> int:
        """The port of the primary as the first Sentinel sees it now."""
        with Redis(port=self.sentinel_ports[0], socket_timeout=2) as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; return its server (for a later restart)."""
        port = self.primary_port()
        server = next(s for s in self.group.servers if s.port == port)
        server.stop(signal.SIGKILL)
        return server

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the Sentinels name a new primary and it accepts writes; its port."""
        wait_until(lambda: self.primary_port() != old_port, timeout, "a new primary")
        port = self.primary_port()
        wait_until(lambda: replication_info(port).get("role") == "master", timeout, "promotion")
        return port

    def cleanup(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self._processes.clear()
        self.group.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelSetup:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
