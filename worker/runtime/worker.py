"""Worker: assembles the engine (reader, lanes, settler, heartbeat, retries, takeover) and runs
its lifecycle: start, serve until stopped, drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis

from worker.batch import BatchHandler
from worker.connection import REDIS_DOWN, Reconnect, connect
from worker.envelopes import opened_first
from worker.errors import GroupRefused, StartupError
from worker.handler import Handler, HandlerContext
from worker.logs import effective_settings
from worker.message import Message
from worker.middleware import worker_middleware
from worker.ops.redis_safety import check_redis_safety
from worker.registry import validate
from worker.runtime.batch_dispatch import BatchDispatcher
from worker.runtime.batching import BatchSpec
from worker.runtime.deadlines import Deadlines
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.lanes import Lanes, Process, ProcessBatch
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.ordered import Ordered, ordered_streams
from worker.runtime.policy import RetryPolicy
from worker.runtime.presence import Presence
from worker.runtime.reader import Reader
from worker.runtime.retries import RetryScan
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.runtime.supervise import bounded, supervise
from worker.runtime.takeover import Takeover
from worker.runtime.threads import HandlerThreads
from worker.settings import WorkerSettings
from worker.topology import SentinelLoginRefused

log = structlog.get_logger("worker")

CLOSE_STEP_S = 10.0
"""Seconds each last step (a handler's on_shutdown, closing a client, stopping a service) may
take before the process gives up on it and exits anyway."""
FINAL_FLUSH_S = 5.0
"""Seconds the last acks get after the handlers stopped, on top of `shutdown_timeout`."""


def batch_specs(handlers: Sequence[Handler]) -> dict[str, BatchSpec]:
    """stream -> how its messages are batched, for the streams of batch handlers."""
    return {
        stream: BatchSpec(h.batch_max, h.batch_wait)
        for h in handlers
        if isinstance(h, BatchHandler)
        for stream in h.streams
    }


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
    from worker.ops.server import OpsServer  # imported late: only when it is wanted

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
    deadlines: Deadlines | None


class Worker:
    """One consumer process: reads, dispatches, settles and reclaims until stopped.

    Args:
        settings: the worker's settings.
        handlers: handler plugins, each bound to its streams.
        stats: where to count; pass one in to read it from outside (metrics, tests).
        services: run beside the worker (started first, stopped last); None for the
            defaults of the settings (the metrics and health server on `metrics_port`).
        middleware: wrapped around every handler call (`worker.middleware`), inside tracing
            (`tracing`) and `middleware` of the settings: middleware objects or
            `module:attr` strings, first listed outermost.

    Raises:
        ConfigError: the handlers cannot run together, or a middleware does not load.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        handlers: Sequence[Handler],
        *,
        stats: Stats | None = None,
        services: Sequence[Service] | None = None,
        middleware: Sequence[Any] = (),
    ) -> None:
        validate(handlers)
        self.settings = settings
        self.handlers = list(handlers)
        self.stats = stats or Stats()
        self.services = list(default_services(settings) if services is None else services)
        self.policy = RetryPolicy.from_settings(settings)
        self.middleware = worker_middleware(settings, self.policy, middleware)
        self.routes = RouteTable(self.handlers, self.stats, self.middleware)
        self.streams = self.routes.streams
        self.ledger = Ledger(
            2 * settings.batch_size + settings.concurrency, settings.held_bytes_max
        )
        self.threads = HandlerThreads(settings.concurrency, self.stats)
        self.gate = ReadGate()
        self.started = asyncio.Event()
        self.stopping = False
        self._stop = asyncio.Event()
        self._signals = 0
        self.redis: Redis | None = None
        self.reader: Reader | None = None
        self.lanes: Lanes | None = None
        self.ordered: Ordered | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ordered_reader_task: asyncio.Task[None] | None = None

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

    def busy(self) -> bool:
        """Is a handler call running right now?"""
        return self.lanes is not None and self.lanes.busy()

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
            redis_url=settings.masked_url,
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
            await self._close(started, reader_redis)
        log.info("worker.stopped", consumer=settings.consumer)

    async def _close(self, started: list[Service], reader_redis: Redis) -> None:
        """Shut handlers, clients and services down; each step bounded, none fatal."""
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            *((f"handler {h.name} on_shutdown", h.on_shutdown) for h in self.handlers),
            *(("redis client", client.aclose) for client in (self.redis, reader_redis) if client),
            *((f"service {type(s).__name__}", s.stop) for s in reversed(started)),
        ]
        for what, step in steps:
            try:
                await bounded(step(), CLOSE_STEP_S, what)
            except TimeoutError:
                pass  # logged as shutdown.stuck
            except Exception:
                log.exception("shutdown.step_failed", step=what)

    def _assemble(self, redis: Redis, reader_redis: Redis) -> Engine:
        settings, policy, ledger, stats = self.settings, self.policy, self.ledger, self.stats
        settler = Settler(redis, settings, policy, ledger, stats)
        dispatcher = Dispatcher(self.routes, settler, settings.handler_timeout, self.threads)
        process: Process = dispatcher.process
        process_batch: ProcessBatch = BatchDispatcher(dispatcher, stats).process_batch
        ordered = self._ordered(redis, reader_redis, settler)
        if ordered is not None:  # partitions leased fleet-wide: worker.runtime.ordered
            process = ordered.wrap_process(process)
            process_batch = ordered.wrap_batch(process_batch)
            ordered.deadlines = dispatcher.deadlines
        lanes = Lanes(
            settings.concurrency,
            process,
            lost=dispatcher.lost,
            stats=stats,
            batching=batch_specs(self.handlers),
            process_batch=process_batch,
        )
        self.lanes = lanes
        submit: Callable[[Message], None] = lanes.submit
        if self.routes.envelopes:  # open those entries first, so lanes order them by their key
            submit = opened_first(lanes.submit, self.routes.envelopes)
        plain = self.streams
        if ordered is not None:
            submit = ordered.wrap_submit(submit)
            plain = tuple(s for s in self.streams if s not in ordered.streams)
        self.reader = Reader(reader_redis, settings, self.streams, ledger, submit, self.gate, stats)
        specs = batch_specs(self.handlers)
        if specs:  # a lane starts a whole batch: read for that many
            self.reader.readahead.per_lane = max(spec.batch_max for spec in specs.values())
        if ordered is not None:
            self.reader.exclude(tuple(ordered.streams))
        return Engine(
            settler=settler,
            lanes=lanes,
            reader=self.reader,
            heartbeat=Heartbeat(redis, settings, ledger, stats),
            retries=RetryScan(redis, settings, policy, ledger, settler, submit, self.gate, stats),
            takeover=Takeover(
                redis,
                settings,
                policy,
                plain,
                ledger,
                settler,
                submit,
                self.gate,
                self.reader_alive,
                stats,
            ),
            deadlines=dispatcher.deadlines,
        )

    def _ordered(self, redis: Redis, reader_redis: Redis, settler: Settler) -> Ordered | None:
        streams = ordered_streams(self.handlers)
        if not streams:
            return None
        self.ordered = Ordered(
            redis,
            reader_redis,
            self.settings,
            streams,
            self.ledger,
            settler,
            self.policy,
            self.gate,
            self.stats,
        )
        return self.ordered

    async def _serve(self, engine: Engine) -> None:
        engine.lanes.start()
        watchdog = self._spawn("deadlines", engine.deadlines.run) if engine.deadlines else None
        settler_task = self._spawn("settler", engine.settler.run)
        # The heartbeat first: a leftover that recovery runs must not look abandoned to a live
        # peer while it runs, however long that takes.
        heartbeat_task = self._spawn("heartbeat", engine.heartbeat.run)
        recovery_task = asyncio.create_task(engine.takeover.recover(), name="syncworker-recover")
        await self._until_recovered(recovery_task, settler_task, heartbeat_task)
        if self.stopping:  # stopped during recovery: the loops below must not take new work
            engine.reader.stop()
            engine.retries.stop()
            engine.takeover.stop()
        self._reader_task = self._spawn("reader", engine.reader.run)
        retry_task = self._spawn("retries", engine.retries.run)
        takeover_task = self._spawn("takeover", engine.takeover.run)
        ordered_tasks = []
        if self.ordered is not None:
            self._ordered_reader_task = self._spawn("ordered-reader", self.ordered.read)
            ordered_tasks = [
                self._spawn("leases", self.ordered.maintain),
                self._ordered_reader_task,
            ]
        presence = Presence.start(engine.heartbeat.redis, self.settings, self.streams, self.stats)
        self.started.set()
        log.info("worker.started", consumer=self.settings.consumer)
        background = (self._reader_task, retry_task, takeover_task, settler_task)
        await self._until_stopped(*background, heartbeat_task)
        if self.ordered is not None:
            self.ordered.stop_reading()
        await self._drain(engine, retry_task, takeover_task, settler_task, recovery_task)
        if self.ordered is not None:
            await self._release_leases(ordered_tasks)
        heartbeat_task.cancel()
        presence.cancel()
        if watchdog is not None:
            watchdog.cancel()

    async def _until_recovered(
        self, recovery: asyncio.Task[None], *tasks: asyncio.Task[None]
    ) -> None:
        """Wait for start-up recovery, or for stop(): then the drain bounds what is left."""
        stop_task = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait(
            {stop_task, recovery, *tasks}, return_when=asyncio.FIRST_COMPLETED
        )
        stop_task.cancel()
        for task in done - {stop_task}:
            task.result()  # re-raise what killed it

    async def _release_leases(self, tasks: list[asyncio.Task[None]]) -> None:
        assert self.ordered is not None
        for task in tasks:
            task.cancel()
        # A release that times out is logged as shutdown.stuck; the leases run out after
        # lease_ttl then.
        with contextlib.suppress(TimeoutError):
            await bounded(self.ordered.release_all(), FINAL_FLUSH_S, "leases")

    async def _connect_and_create_groups(self) -> bool:
        assert self.reader is not None
        reconnect = Reconnect("connect", self.stats)
        while not self.stopping:
            try:
                await self.reader.ensure_groups()
                return True
            except SentinelLoginRefused as exc:
                # Not an outage: the sentinels will refuse these credentials every time.
                log.error("worker.start_failed", error_type=type(exc).__name__, error=str(exc))
                raise StartupError(str(exc)) from None
            except REDIS_DOWN as exc:
                delay = reconnect.failed(exc)
            except GroupRefused as exc:
                # Not an outage: this user, or this Redis, cannot create the group. Say so
                # once and end, rather than retry in silence.
                log.error(
                    "worker.start_failed",
                    stream=exc.stream,
                    group=exc.group,
                    error_type=type(exc.error).__name__,
                    error=str(exc.error),
                    hint=exc.hint,
                )
                raise StartupError(str(exc)) from None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return False

    def _spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Start a background loop under supervision: restarted whenever it dies."""
        loop = supervise(name, run, self.stats, lambda: self.stopping)
        return asyncio.create_task(loop, name=f"syncworker-{name}")

    async def _until_stopped(self, *tasks: asyncio.Task[None]) -> None:
        """Wait for stop(). Supervised loops restart after any surprise, so one that ends
        here hit an error that means the configuration cannot work: the worker ends too."""
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
        recovery_task: asyncio.Task[None],
    ) -> None:
        """Stop reading, let running handlers finish, ack them, and release the rest."""
        started = time.monotonic()
        assert self._reader_task is not None
        # The flag ends the loop at its next turn even if the cancellation is lost: on
        # Python 3.11 a cancel that lands as a timeout expires inside redis-py surfaces as a
        # TimeoutError, which the loop takes for a slow read.
        engine.reader.stop()
        self._reader_task.cancel()
        readers = [self._reader_task]
        if self._ordered_reader_task is not None:  # its leases are renewed on meanwhile
            self._ordered_reader_task.cancel()
            readers.append(self._ordered_reader_task)
        engine.retries.stop()
        engine.takeover.stop()
        unstarted = engine.lanes.close()
        for msg in unstarted:
            self.ledger.drop(msg)
        interrupted = await engine.lanes.wait(self.settings.shutdown_timeout)
        # A thread still running is abandoned, and its entry not released: released, it could
        # be taken over and run again while this process still runs the first call.
        abandoned = {id(msg) for msg in self.threads.close()}
        interrupted = [msg for msg in interrupted if id(msg) not in abandoned]
        retry_task.cancel()
        takeover_task.cancel()
        recovery_task.cancel()
        engine.settler.close()
        background = (*readers, retry_task, takeover_task, settler_task, recovery_task)
        _, stuck = await asyncio.wait(background, timeout=FINAL_FLUSH_S)
        if stuck:
            log.warning("worker.tasks_stuck", tasks=sorted(t.get_name() for t in stuck))
        # What a read or claim in flight delivered after the lanes closed never started
        # either: hand it back with the rest (those loops have ended, unless logged stuck).
        late = engine.lanes.late()
        for msg in late:
            self.ledger.drop(msg)
        unstarted += late
        try:  # bounded, not wait_for: a cancelled flush may never end (a lost cancellation)
            flushed = await bounded(engine.settler.drain(FINAL_FLUSH_S), FINAL_FLUSH_S, "acks")
        except TimeoutError:
            flushed = False
        to_release: list[Message] = unstarted + interrupted
        waiting = list(self.ledger.waiting.values())
        if to_release or waiting:
            try:
                await bounded(
                    engine.heartbeat.release(to_release, waiting), FINAL_FLUSH_S, "release"
                )
            except (*REDIS_DOWN, TimeoutError) as exc:
                log.warning(
                    "release.failed",
                    count=len(to_release) + len(waiting),
                    error=str(exc),
                    note="they stay pending and are taken over after claim_idle",
                )
        log.info(
            "worker.drained",
            duration_s=round(time.monotonic() - started, 3),
            released=len(unstarted),
            interrupted=len(interrupted),
            threads_abandoned=len(abandoned),
            waiting=len(waiting),
            acks_flushed=flushed,
        )
