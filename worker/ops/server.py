"""The operations service of a worker: /metrics, /healthz and /readyz, and the group gauges.

`Worker` starts it (when `metrics_port` is not 0) before it connects, so that readiness says
503 while the worker is still connecting, and stops it after the drain, so that the last
counts can still be scraped during a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.admin.groups import read_group_states
from worker.connection import REDIS_DOWN, connect
from worker.errors import ConfigError
from worker.ops.health import (
    ProgressWatch,
    Verdict,
    liveness,
    progress_deadline,
    readiness,
    stuck_after,
)
from worker.ops.httpserver import HttpServer, Response
from worker.ops.metrics import GroupGauges, WorkerCollector, build_registry
from worker.runtime.dispatch import RouteTable
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.stats import Stats
from worker.runtime.supervise import bounded, wait_ended
from worker.settings import WorkerSettings


class ObservedWorker(Protocol):
    """What the server reads of a running worker; `worker.runtime.worker.Worker` is one.

    A protocol rather than an import of the worker: the worker starts this server, so the
    server must not import the worker back.
    """

    settings: WorkerSettings
    stats: Stats
    streams: tuple[str, ...]
    routes: RouteTable
    ledger: Ledger
    gate: ReadGate
    started: asyncio.Event
    stopping: bool

    def reader_alive(self) -> bool: ...

    def busy(self) -> bool: ...


log = structlog.get_logger("worker.ops.server")

PROBE_TIMEOUT_S = 0.9
"""Readiness answers within this, inside Kubernetes' default one-second probe timeout."""
STOP_STEP_S = 2.0
"""Seconds each step of `stop` may take before it is given up on."""
READY_CACHE_S = 1.0
"""A readiness answer is reused this long, so a burst of probes costs Redis one round trip."""


class OpsServer:
    """Serves metrics and probes for one worker, and refreshes its group gauges.

    Args:
        host: address to bind; defaults to the worker's `metrics_host`.
        port: port to bind; defaults to the worker's `metrics_port` (0 here binds any free
            port; read `port` after start).
        registry: where to register the worker's collector; a fresh registry with the
            process collectors when None.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self.registry = registry
        self.gauges = GroupGauges()
        self.port = 0
        self._worker: ObservedWorker | None = None
        self._redis: Redis | None = None
        self._http: HttpServer | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._ready: tuple[float, Verdict] | None = None
        self._stats_failing = False
        self._progress = ProgressWatch()

    async def start(self, worker: ObservedWorker) -> None:
        """Bind the HTTP server and start refreshing the gauges."""
        settings = worker.settings
        self._worker = worker
        collector = WorkerCollector(
            worker.stats,
            settings.group,
            {stream: worker.routes.handler_names(stream) for stream in worker.streams},
            lambda: {stream: len(held) for stream, held in worker.ledger.held.items()},
            self.gauges,
            held_bytes=lambda: worker.ledger.bytes,
        )
        if self.registry is None:
            self.registry = build_registry(collector)
        else:
            self.registry.register(collector)
        self._redis = connect(settings)
        host = settings.metrics_host if self._host is None else self._host
        port = settings.metrics_port if self._port is None else self._port
        self._http = HttpServer(
            host,
            port,
            {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz},
        )
        try:
            await self._http.start()
        except OSError as exc:
            await self._redis.aclose()
            raise ConfigError(
                "SYNCWORKER_METRICS_PORT",
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another worker "
                "running on this machine? Give each one another port, or set "
                "SYNCWORKER_METRICS_PORT=0 to run without the metrics and health server",
            ) from None
        self.port = self._http.port
        self._refresher = asyncio.create_task(self._refresh_forever(), name="syncworker-stats")
        log.info(
            "ops.listening", host=host, port=self.port, paths=["/metrics", "/healthz", "/readyz"]
        )

    async def stop(self) -> None:
        """Stop refreshing and serving; each step is bounded, so a lost cancellation (or a
        Redis that does not answer) never keeps the process from exiting."""
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher.set_name("ops refresher")
            await wait_ended([self._refresher], STOP_STEP_S, "ops server")
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self._http is not None:
            steps.append(("ops http server", self._http.stop))
        if self._redis is not None:
            steps.append(("ops redis client", self._redis.aclose))
        for what, step in steps:
            try:
                await bounded(step(), STOP_STEP_S, what)
            except TimeoutError:
                pass  # logged as shutdown.stuck
            except Exception:
                log.exception("ops.stop_failed", step=what)

    # Endpoints --------------------------------------------------------------------------

    async def _metrics(self) -> Response:
        assert self.registry is not None
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    async def _healthz(self) -> Response:
        worker = self._require_worker()
        now = time.monotonic()
        verdict = liveness(
            now=now,
            started=worker.started.is_set(),
            stopping=worker.stopping,
            reader_alive=worker.reader_alive(),
            gate_open=worker.gate.is_open,
            last_read_loop=worker.stats.last_read_loop,
            deadline=stuck_after(worker.settings),
            stalled_s=self._progress.stalled_for(now, worker.stats.calls_ended, worker.busy()),
            progress_deadline=progress_deadline(worker.settings),
        )
        return _json(verdict)

    async def _readyz(self) -> Response:
        worker = self._require_worker()
        if worker.stopping:
            return _json(Verdict(False, "stopping"))
        if not worker.started.is_set():
            return _json(Verdict(False, "starting"))
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < READY_CACHE_S:
            return _json(self._ready[1])
        verdict = await self._check_ready()
        self._ready = (time.monotonic(), verdict)
        return _json(verdict)

    async def _check_ready(self) -> Verdict:
        worker = self._require_worker()
        assert self._redis is not None
        try:
            return await asyncio.wait_for(
                readiness(self._redis, worker.streams, worker.settings.group), PROBE_TIMEOUT_S
            )
        except TimeoutError:
            return Verdict(False, "redis unavailable", "no answer in time")
        except REDIS_DOWN as exc:
            return Verdict(False, "redis unavailable", str(exc))
        except ResponseError as exc:
            return Verdict(False, "redis error", str(exc))

    def _require_worker(self) -> ObservedWorker:
        assert self._worker is not None, "OpsServer.start was not called"
        return self._worker

    # Gauges -----------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        worker = self._require_worker()
        while True:
            try:
                await self.refresh()
            except Exception:  # a surprise here must not end the refreshes for good
                log.exception("stats.refresh_failed")
            await asyncio.sleep(worker.settings.stats_interval)

    async def refresh(self) -> None:
        """Read lag, pending and dead-letter lengths of every routed stream from Redis."""
        worker = self._require_worker()
        settings = worker.settings
        assert self._redis is not None
        try:
            states = await read_group_states(
                self._redis, worker.streams, settings.group, settings.dead_letter_suffix
            )
        except (*REDIS_DOWN, ResponseError) as exc:
            worker.stats.redis_errors["stats"] += 1
            if not self._stats_failing:
                log.warning("redis.unavailable", operation="stats", error=str(exc))
            self._stats_failing = True
            return
        if self._stats_failing:
            log.info("redis.available", operation="stats")
        self._stats_failing = False
        self.gauges.states = {state.stream: state for state in states if state.exists}


def _json(verdict: Verdict) -> Response:
    body = json.dumps(verdict.as_dict()).encode() + b"\n"
    return Response(200 if verdict.ok else 503, body, "application/json")
