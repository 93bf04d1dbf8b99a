"""Worker: assembles the engine (reader, lanes, settler, heartbeat, retries, takeover) and runs
its lifecycle: start, serve until stopped, drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.asyncio import Redis

from worker.connection import REDIS_DOWN, Reconnect, connect, mask_url
from worker.handler import Handler, HandlerContext
from worker.logs import effective_settings
from worker.message import Message
from worker.ops.redis_safety import check_redis_safety
from worker.registry import validate
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.lanes import Lanes
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.policy import RetryPolicy
from worker.runtime.presence import Presence
from worker.runtime.reader import Reader
from worker.runtime.retries import RetryScan
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.runtime.takeover import Takeover
from worker.settings import WorkerSettings

log = structlog.get_logger("worker")

FINAL_FLUSH_S = 5.0
"""Seconds the last acks get after the handlers stopped, on top of `shutdown_timeout`."""


class Service(Protocol):
    """Something that runs beside the worker, such as the metrics and health server."""

    async def start(self, worker: Worker) -> None:
        """Called before the worker connects to Redis."""

    async def stop(self) -> None:
        """Called after the worker drained and its handlers shut down."""


def default_services(settings: WorkerSettings) -> list[Service]:
    """The metrics and health server, unless `metrics_port` is 0."""
    if settings.metrics_port == 0:
        return []
    from worker.ops.server import OpsServer  # imported late: it imports this module for typing

    return [OpsServer()]


@dataclass(slots=True)
class Engine:
    """The parts of one running worker, wired to each other by `Worker._assemble`."""

    settler: Settler
    lanes: Lanes
    reader: Reader
    heartbeat: Heartbeat
    retries: RetryScan
    takeover: Takeover


class Worker:
    """One consumer process: reads, dispatches, settles and reclaims until stopped.

    Args:
        settings: the worker's settings.
        handlers: handler plugins, each bound to its streams.
        stats: where to count; pass one in to read it from outside (metrics, tests).
        services: run beside the worker (started first, stopped last); None for the
            defaults of the settings (the metrics and health server on `metrics_port`).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        handlers: Sequence[Handler],
        *,
        stats: Stats | None = None,
        services: Sequence[Service] | None = None,
    ) -> None:
        validate(handlers)
        self.settings = settings
        self.handlers = list(handlers)
        self.stats = stats or Stats()
        self.services = list(default_services(settings) if services is None else services)
        self.routes = RouteTable(self.handlers, self.stats)
        self.streams = self.routes.streams
        self.ledger = Ledger(2 * settings.batch_size + settings.concurrency)
        self.gate = ReadGate()
        self.started = asyncio.Event()
        self.stopping = False
        self._stop = asyncio.Event()
        self._signals = 0
        self.redis: Redis | None = None
        self.policy = RetryPolicy.from_settings(settings)
        self.reader: Reader | None = None
        self._reader_task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Ask the worker to drain and return from `run`."""
        self.stopping = True
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT drain gracefully; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning(
                "worker.killed",
                signal=sig.name,
                note="second signal: exiting now; unfinished entries stay pending",
            )
            os._exit(128 + sig.value)
        log.info(
            "worker.stopping", signal=sig.name, shutdown_timeout_s=self.settings.shutdown_timeout
        )
        self.stop()

    def reader_alive(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    async def run(self) -> None:
        """Run until `stop()` (or a signal), then drain and return."""
        settings = self.settings
        self.redis = connect(settings)
        reader_redis = connect(settings, blocking_reads=True)
        engine = self._assemble(self.redis, reader_redis)
        log.info(
            "worker.starting",
            redis_url=mask_url(settings.redis_url.get_secret_value()),
            group=settings.group,
            consumer=settings.consumer,
            streams=list(self.streams),
            handlers=[h.name for h in self.handlers],
            settings=effective_settings(settings),
        )
        started: list[Service] = []
        try:
            for service in self.services:
                await service.start(self)
                started.append(service)
            if not await self._connect_and_create_groups():
                return
            await check_redis_safety(self.redis, self.stats)
            context = HandlerContext(self.redis, settings.group, settings.consumer, settings)
            for h in self.handlers:
                await h.on_startup(context)
            await self._serve(engine)
        finally:
            for h in self.handlers:
                try:
                    await h.on_shutdown()
                except Exception:
                    log.exception("handler.shutdown_failed", handler=h.name)
            await self.redis.aclose()
            await reader_redis.aclose()
            for service in reversed(started):
                await service.stop()
        log.info("worker.stopped", consumer=settings.consumer)

    def _assemble(self, redis: Redis, reader_redis: Redis) -> Engine:
        settings, policy, ledger, stats = self.settings, self.policy, self.ledger, self.stats
        settler = Settler(redis, settings, policy, ledger, stats)
        dispatcher = Dispatcher(self.routes, settler, settings.handler_timeout)
        lanes = Lanes(settings.concurrency, dispatcher.process)
        self.reader = Reader(
            reader_redis, settings, self.streams, ledger, lanes.submit, self.gate, stats
        )
        return Engine(
            settler=settler,
            lanes=lanes,
            reader=self.reader,
            heartbeat=Heartbeat(redis, settings, ledger, stats),
            retries=RetryScan(
                redis, settings, policy, ledger, settler, lanes.submit, self.gate, stats
            ),
            takeover=Takeover(
                redis,
                settings,
                policy,
                self.streams,
                ledger,
                settler,
                lanes.submit,
                self.gate,
                self.reader_alive,
                stats,
            ),
        )

    async def _serve(self, engine: Engine) -> None:
        engine.lanes.start()
        settler_task = asyncio.create_task(engine.settler.run(), name="syncworker-settler")
        await engine.takeover.recover()
        self._reader_task = asyncio.create_task(engine.reader.run(), name="syncworker-reader")
        retry_task = asyncio.create_task(engine.retries.run(), name="syncworker-retries")
        takeover_task = asyncio.create_task(engine.takeover.run(), name="syncworker-takeover")
        heartbeat_task = asyncio.create_task(engine.heartbeat.run(), name="syncworker-heartbeat")
        presence = Presence.start(engine.heartbeat.redis, self.settings, self.streams, self.stats)
        self.started.set()
        log.info("worker.started", consumer=self.settings.consumer)
        background = (self._reader_task, retry_task, takeover_task, settler_task)
        await self._until_stopped(*background, heartbeat_task)
        await self._drain(engine, retry_task, takeover_task, settler_task)
        heartbeat_task.cancel()
        presence.cancel()

    async def _connect_and_create_groups(self) -> bool:
        assert self.reader is not None
        reconnect = Reconnect("connect", self.stats)
        while not self.stopping:
            try:
                await self.reader.ensure_groups()
                return True
            except REDIS_DOWN as exc:
                delay = reconnect.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return False

    async def _until_stopped(self, *tasks: asyncio.Task[None]) -> None:
        """Wait for stop(); a background task dying on its own is a bug worth crashing for."""
        stop_task = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({stop_task, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        if stop_task not in done:
            stop_task.cancel()
            for task in done:
                task.result()  # re-raise what killed it

    async def _drain(
        self,
        engine: Engine,
        retry_task: asyncio.Task[None],
        takeover_task: asyncio.Task[None],
        settler_task: asyncio.Task[None],
    ) -> None:
        """Stop reading, let running handlers finish, ack them, and release the rest."""
        started = time.monotonic()
        assert self._reader_task is not None
        # The flag ends the loop at its next turn even if the cancellation is lost: on
        # Python 3.11 a cancel that lands as a timeout expires inside redis-py surfaces as a
        # TimeoutError, which the loop takes for a slow read.
        engine.reader.stop()
        self._reader_task.cancel()
        engine.retries.stop()
        engine.takeover.stop()
        unstarted = engine.lanes.close()
        for msg in unstarted:
            self.ledger.drop(msg)
        interrupted = await engine.lanes.wait(self.settings.shutdown_timeout)
        retry_task.cancel()
        takeover_task.cancel()
        engine.settler.close()
        background = (self._reader_task, retry_task, takeover_task, settler_task)
        _, stuck = await asyncio.wait(background, timeout=FINAL_FLUSH_S)
        if stuck:
            log.warning("worker.tasks_stuck", tasks=sorted(t.get_name() for t in stuck))
        flushed = await engine.settler.drain(FINAL_FLUSH_S)
        to_release: list[Message] = unstarted + interrupted
        if to_release:
            try:
                await asyncio.wait_for(engine.heartbeat.release(to_release), FINAL_FLUSH_S)
            except (*REDIS_DOWN, TimeoutError) as exc:
                log.warning(
                    "release.failed",
                    count=len(to_release),
                    error=str(exc),
                    note="they stay pending and are taken over after claim_idle",
                )
        log.info(
            "worker.drained",
            duration_s=round(time.monotonic() - started, 3),
            released=len(unstarted),
            interrupted=len(interrupted),
            acks_flushed=flushed,
        )
