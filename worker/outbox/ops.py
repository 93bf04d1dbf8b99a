"""The relay's operations server: /metrics and /healthz, on the worker's HTTP server."""

from __future__ import annotations

import json
import time

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from worker.errors import ConfigError
from worker.ops.httpserver import HttpServer, Response
from worker.outbox.stats import OutboxCollector, OutboxStats

log = structlog.get_logger("worker.outbox.ops")

STUCK_AFTER_S = 60.0
"""/healthz fails once the relay loop has not turned for this long: every wait in it (a
poll, a lock attempt, a back-off, a connection attempt) is far shorter."""


class RelayOpsServer:
    """Serves the relay's metrics and liveness.

    Args:
        stats: the relay's numbers.
        table: the outbox table, the `table` label of every series.
        host, port: where to listen; port 0 picks a free one (read `port` after `start`).
    """

    def __init__(self, stats: OutboxStats, table: str, host: str, port: int) -> None:
        self.stats = stats
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(OutboxCollector(stats, table))
        self._http = HttpServer(host, port, {"/metrics": self._metrics, "/healthz": self._healthz})
        self.port = port

    async def start(self) -> None:
        """Bind the server.

        Raises:
            ConfigError: the port is taken.
        """
        try:
            await self._http.start()
        except OSError as exc:
            raise ConfigError(
                "--metrics-port",
                f"cannot listen on {self._http.host}:{self._http.port}: {exc.strerror or exc}; "
                "give each relay and worker on this machine its own port, or 0 for none",
            ) from None
        self.port = self._http.port
        log.info("ops.listening", host=self._http.host, port=self.port)

    async def stop(self) -> None:
        await self._http.stop()

    async def _metrics(self) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    async def _healthz(self) -> Response:
        idle = time.monotonic() - self.stats.last_turn
        ok = idle < STUCK_AFTER_S
        body = {
            "ok": ok,
            "role": "leader" if self.stats.leader else "standby",
            "loop_idle_s": round(idle, 3),
        }
        return Response(200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json")
