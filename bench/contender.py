"""One contender, run in its own subprocess: `python -m bench.contender KIND [options]`.

The protocol with the harness is two lines: the contender prints `ready` once everything is
imported, waits for `go` on stdin, consumes until SIGTERM, then exits. Timing happens in the
harness (from `go` to the group having nothing left to read or acknowledge), so start-up
imports are excluded alike for every contender. With `--latencies FILE`, the contender writes
one (ack time, entry-id time, producer time) triple per acknowledged entry when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis


class Latencies:
    """Per-entry timings, kept flat in an array so that recording stays cheap."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.values = array("d")

    def record(self, acked_at: float, entry_id: bytes | str, fields: Any) -> None:
        if self.path is None:
            return
        raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        sent = fields.get(b"sent") if fields is not None else None
        self.values.extend(
            (acked_at, int(raw_id.partition("-")[0]) / 1000.0, float(sent) if sent else 0.0)
        )

    def save(self) -> None:
        if self.path is not None:
            Path(self.path).write_bytes(self.values.tobytes())


async def raw_loop(args: argparse.Namespace, stop: asyncio.Event, lat: Latencies) -> None:
    """The practical ceiling: XREADGROUP COUNT 500, json.loads each `data`, one XACK a batch."""
    redis = Redis.from_url(args.url)
    loads = json.loads
    streams: Any = {args.stream: ">"}
    while not stop.is_set():
        reply: Any = await redis.xreadgroup(
            args.group, args.consumer, streams, count=500, block=100
        )
        for _stream, entries in reply or ():
            ids = []
            for entry_id, fields in entries:
                loads(fields[b"data"])
                ids.append(entry_id)
            await redis.xack(args.stream, args.group, *ids)
            if lat.path is not None:
                now = time.time()
                for entry_id, fields in entries:
                    lat.record(now, entry_id, fields)
    await redis.aclose()


async def syncworker(args: argparse.Namespace, stop: asyncio.Event, lat: Latencies) -> None:
    """A real Worker (the same object `syncworker run` builds) with one benchmark handler."""
    from bench.handlers import HANDLERS
    from worker import Worker, WorkerSettings
    from worker.logs import configure_logging

    configure_logging("ERROR", "json")  # e.g. no warning about the bench server's persistence
    settings = WorkerSettings(
        redis_url=args.url,
        group=args.group,
        consumer=args.consumer,
        concurrency=args.concurrency,
        metrics_port=0,
        log_level="ERROR",
        **({"batch_size": args.batch_size} if args.batch_size else {}),
    )
    handler = HANDLERS[args.handler]().bind([args.stream])
    if lat.path is not None:
        _record_acks(lat)
    worker = Worker(settings, [handler])
    task = asyncio.create_task(worker.run())
    await stop.wait()
    worker.stop()
    await task


def _record_acks(lat: Latencies) -> None:
    """Time each entry when its XACK has returned, by wrapping the settler's bookkeeping."""
    from worker.runtime.settle import Settler

    original = Settler._record

    def record(self: Settler, batch: Any, *rest: Any) -> Any:
        now = time.time()
        for messages in batch.acks.values():  # an `Outcomes`: acks by stream
            for msg in messages:
                lat.record(now, msg.id, msg.raw)
        return original(self, batch, *rest)

    Settler._record = record  # type: ignore[method-assign,assignment]


async def faststream(args: argparse.Namespace, stop: asyncio.Event, lat: Latencies) -> None:
    """FastStream's RedisBroker with a StreamSub in a consumer group (acks after the handler)."""
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(args.url, logger=None)  # type: ignore[arg-type]
    sub = StreamSub(
        args.stream,
        group=args.group,
        consumer=args.consumer,
        batch=args.batch,
        max_records=500,
        polling_interval=100,
    )
    options: dict[str, Any] = {}
    if args.concurrency > 1:
        options["max_workers"] = args.concurrency

    # FastStream decodes the `data` field as JSON itself (it is the message body), so the
    # handlers do nothing more: the same work as the raw loop's json.loads.
    if args.batch:

        @broker.subscriber(stream=sub, **options)  # type: ignore[untyped-decorator]
        async def on_batch(body: list[Any]) -> None:
            return None

    else:

        @broker.subscriber(stream=sub, **options)  # type: ignore[untyped-decorator]
        async def on_message(body: Any) -> None:
            return None

    await broker.start()
    await stop.wait()
    await broker.stop()


def _import_ahead(kind: str) -> None:
    """Import what the contender needs before `ready`, so that imports are never timed."""
    import importlib

    modules = {
        "raw": [],
        "syncworker": ["worker", "worker.logs", "worker.runtime.settle", "bench.handlers"],
        "faststream": ["faststream.redis"],
    }[kind]
    for name in modules:
        importlib.import_module(name)


KINDS: dict[str, Callable[[argparse.Namespace, asyncio.Event, Latencies], Awaitable[None]]] = {
    "raw": raw_loop,
    "syncworker": syncworker,
    "faststream": faststream,
}


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lat = Latencies(args.latencies)
    await KINDS[args.kind](args, stop, lat)
    lat.save()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.contender")
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", default="bench-1")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--handler", default="noop")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--batch", action="store_true", help="FastStream: batch=True")
    parser.add_argument("--latencies", default=None)
    parser.add_argument(
        "--gc-tuning", action="store_true", help="raw: tune the GC as `syncworker run` does"
    )
    args = parser.parse_args()
    _import_ahead(args.kind)
    if args.kind == "syncworker" or args.gc_tuning:
        from worker.gc_tuning import tune_gc
        from worker.settings import WorkerSettings

        # As `syncworker run` does before its loop starts (SYNCWORKER_GC_THRESHOLD=0 to
        # compare without); untimed, like the imports.
        tune_gc(WorkerSettings().gc_threshold)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_main(args))
    else:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
