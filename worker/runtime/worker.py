"""Worker: assembles the read loop, lanes, settler and reclaimer, and runs their lifecycle."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from typing import Protocol

import structlog
from redis.asyncio import Redis

from worker.connection import connect, mask_url
from worker.handler import Handler, HandlerContext
from worker.logs import effective_settings
from worker.message import Message
from worker.ops.redis_safety import check_redis_safety
from worker.registry import validate
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.lanes import Lanes
from worker.runtime.ledger import Ledger
from worker.runtime.reader import Consumer
from worker.runtime.settle import REDIS_DOWN, Settler
from worker.runtime.stats import Stats
from worker.runtime.takeover import ReadGate, Reclaimer
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
        self.consumer: Consumer | None = None
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
        ledger, stats = self.ledger, self.stats
        settler = Settler(self.redis, settings, ledger, stats)
        dispatcher = Dispatcher(self.routes, settler, settings.handler_timeout)
        lanes = Lanes(settings.concurrency, dispatcher.process)
        self.consumer = Consumer(
            reader_redis, settings, self.streams, ledger, lanes.submit, self.gate, stats
        )
        reclaimer = Reclaimer(
            self.redis,
            settings,
            self.streams,
            ledger,
            settler,
            lanes.submit,
            self.gate,
            self.reader_alive,
            stats,
        )
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
            await check_redis_safety(self.redis, stats)
            context = HandlerContext(self.redis, settings.group, settings.consumer, settings)
            for h in self.handlers:
                await h.on_startup(context)
            lanes.start()
            settler_task = asyncio.create_task(settler.run(), name="syncworker-settler")
            await reclaimer.recover()
            self._reader_task = asyncio.create_task(self.consumer.run(), name="syncworker-reader")
            reclaim_task = asyncio.create_task(reclaimer.run(), name="syncworker-reclaimer")
            heartbeat_task = asyncio.create_task(reclaimer.beat(), name="syncworker-heartbeat")
            self.started.set()
            log.info("worker.started", consumer=settings.consumer)
            await self._until_stopped(self._reader_task, reclaim_task, heartbeat_task, settler_task)
            await self._drain(lanes, reclaimer, settler, reclaim_task, settler_task)
            heartbeat_task.cancel()
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

    async def _connect_and_create_groups(self) -> bool:
        assert self.consumer is not None
        delay = 0.1
        while not self.stopping:
            try:
                await self.consumer.ensure_groups()
                return True
            except REDIS_DOWN as exc:
                self.stats.redis_errors["connect"] += 1
                log.warning(
                    "redis.unavailable", operation="connect", error=str(exc), retry_in_s=delay
                )
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 5.0)
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
        lanes: Lanes,
        reclaimer: Reclaimer,
        settler: Settler,
        reclaim_task: asyncio.Task[None],
        settler_task: asyncio.Task[None],
    ) -> None:
        """Stop reading, let running handlers finish, ack them, and release the rest."""
        started = time.monotonic()
        assert self._reader_task is not None and self.consumer is not None
        # The flag ends the loop at its next turn even if the cancellation is lost: on
        # Python 3.11 a cancel that lands as a timeout expires inside redis-py surfaces as a
        # TimeoutError, which the loop takes for a slow read.
        self.consumer.stop()
        self._reader_task.cancel()
        reclaimer.stop()
        unstarted = lanes.close()
        for msg in unstarted:
            self.ledger.drop(msg)
        interrupted = await lanes.wait(self.settings.shutdown_timeout)
        reclaim_task.cancel()
        settler.close()
        background = (self._reader_task, reclaim_task, settler_task)
        _, stuck = await asyncio.wait(background, timeout=FINAL_FLUSH_S)
        if stuck:
            log.warning("worker.tasks_stuck", tasks=sorted(t.get_name() for t in stuck))
        flushed = await settler.drain(FINAL_FLUSH_S)
        to_release: list[Message] = unstarted + interrupted
        if to_release:
            try:
                await asyncio.wait_for(reclaimer.release(to_release), FINAL_FLUSH_S)
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
