"""`python -m bench.readahead`: fair read-ahead, with read sizing on and off.

Real `syncworker run` processes on a redis-server of their own, each case run with the
default `SYNCWORKER_READ_HORIZON` and with 0 (every read asks for up to `batch_size`, the
behaviour before read-ahead):

1. Slow handlers. A backlog of `--slow-entries` (40) entries of a `--sleep` (2 s) handler,
   `--workers` (4) processes of `--concurrency` (4) lanes started together. Printed: the wall
   time until the group has acked everything (start-up included, about half a second), the
   ideal (entries x sleep / all lanes), the time from the first read on (start-up under load
   can take seconds, and the first process up takes the backlog), and the most entries one
   consumer held at once.
2. Fast handlers. One process with the no-op handler drains `--fast-entries` (200,000).
   Printed: messages per second from its first read (start-up excluded), median of
   `--rounds`, the two settings taken in alternation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from redis import Redis

from bench.harness import ROOT, fill, wait_done
from worker.redis_server import RedisServer


def worker(url: str, stream: str, group: str, consumer: str, handler: str, **settings: Any) -> Any:
    """`syncworker run` with `handler` on `stream`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SYNCWORKER_REDIS_URL=url,
        SYNCWORKER_GROUP=group,
        SYNCWORKER_CONSUMER=consumer,
        SYNCWORKER_ROUTES=f'[{{"stream": "{stream}", "handler": "{handler}"}}]',
        SYNCWORKER_METRICS_PORT="0",
        SYNCWORKER_LOG_LEVEL="ERROR",
        SYNCWORKER_LOG_FORMAT="json",
    )
    for key, value in settings.items():
        env[f"SYNCWORKER_{key.upper()}"] = str(value)
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(processes: list[Any]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def slow(redis: Redis, url: str, args: argparse.Namespace, horizon: float) -> dict[str, Any]:
    stream, group = f"bench:readahead:slow:{horizon}", "g"
    redis.delete(stream)
    last = fill(redis, stream, args.slow_entries)
    redis.xgroup_create(stream, group, id="0")
    started = time.perf_counter()
    procs = [
        worker(
            url,
            stream,
            group,
            f"w{n}",
            "bench.handlers:Sleep",
            concurrency=args.concurrency,
            read_horizon=horizon,
        )
        for n in range(args.workers)
    ]
    most = 0
    first_read: float | None = None
    try:
        while True:
            consumers = redis.xinfo_consumers(stream, group)
            most = max([most, *(int(c["pending"]) for c in consumers)])
            if first_read is None and consumers:
                first_read = time.perf_counter()
            try:
                finished = wait_done(redis, stream, group, last, timeout=0.05)
                break
            except TimeoutError:
                if time.perf_counter() - started > 600:
                    raise
    finally:
        stop(procs)
    assert first_read is not None
    return {
        "seconds": finished - started,
        "after_first_read": finished - first_read,
        "most_held": most,
    }


def fast(redis: Redis, url: str, args: argparse.Namespace, horizon: float) -> tuple[float, int]:
    """Messages per second from the worker's first read, and the XREADGROUP calls it made."""
    stream, group = f"bench:readahead:fast:{horizon}", "g"
    redis.delete(stream)
    last = fill(redis, stream, args.fast_entries)
    redis.xgroup_create(stream, group, id="0")
    redis.config_resetstat()
    procs = [worker(url, stream, group, "w0", "bench.handlers:Noop", read_horizon=horizon)]
    try:
        while not redis.xinfo_consumers(stream, group):  # its first read: start-up is over
            time.sleep(0.001)
        first_read = time.perf_counter()
        finished = wait_done(redis, stream, group, last, timeout=600)
    finally:
        stop(procs)
    reads = int(redis.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0))
    redis.delete(stream)
    return args.fast_entries / (finished - first_read), reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-entries", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--fast-entries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--horizon", type=float, default=1.0, help="the default to compare")
    parser.add_argument("--only", default="slow,fast", help="slow, fast, or both")
    args = parser.parse_args()
    os.environ["BENCH_SLEEP_S"] = str(args.sleep)
    horizons = {f"read_horizon={args.horizon}": args.horizon, "read_horizon=0 (before)": 0.0}
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        if "slow" in args.only:
            run_slow(redis, server.url, args, horizons)
        if "fast" in args.only:
            run_fast(redis, server.url, args, horizons)
        redis.close()


def run_slow(redis: Redis, url: str, args: argparse.Namespace, horizons: dict[str, float]) -> None:
    ideal = args.slow_entries * args.sleep / (args.workers * args.concurrency)
    print(
        f"slow: {args.slow_entries} x {args.sleep} s on {args.workers} workers x "
        f"{args.concurrency} lanes (ideal {ideal:.1f} s)"
    )
    for name, horizon in horizons.items():
        result = slow(redis, url, args, horizon)
        print(
            f"  {name:26} {result['seconds']:6.1f} s from the start, "
            f"{result['after_first_read']:5.1f} s from the first read; "
            f"most held by one consumer: {result['most_held']}"
        )


def run_fast(redis: Redis, url: str, args: argparse.Namespace, horizons: dict[str, float]) -> None:
    print(f"fast: no-op handler, {args.fast_entries} entries, 1 worker, median of rounds")
    rates: dict[str, list[float]] = {name: [] for name in horizons}
    reads: dict[str, list[int]] = {name: [] for name in horizons}
    for _ in range(args.rounds):
        for name, horizon in horizons.items():
            rate, calls = fast(redis, url, args, horizon)
            rates[name].append(rate)
            reads[name].append(calls)
    for name, values in rates.items():
        print(
            f"  {name:26} {statistics.median(values):9,.0f} msg/s   "
            f"(rounds: {', '.join(f'{v:,.0f}' for v in values)}; "
            f"XREADGROUP calls: {', '.join(map(str, reads[name]))})"
        )


if __name__ == "__main__":
    main()
