"""`python -m bench.ordered`: what fleet-wide order costs, and how fast partitions move.

Each scenario runs real `syncworker run` processes on a redis-server of its own, with the
`bench.handlers:Sleep` handler on a logical stream of `--partitions` partitions:

1. Throughput: one worker drains `--entries` events over `--keys` keys, the route unordered,
   then ordered, then strict (a no-op handler, or `--sleep` per message and a counter write,
   concurrency 16). Timed from the group's first read to nothing left to read or acknowledge.
2. Takeover after SIGKILL: two workers share the partitions; the one holding more is killed.
   Printed: from the kill until the survivor holds every lease, against `lease_ttl`.
3. Rebalance on join: one worker holds every partition; a second starts. Printed: from the
   newcomer's first membership entry until the leases are split evenly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from redis import Redis

from bench.harness import ROOT
from worker.partitions import partition_names, stream_for
from worker.redis_server import RedisServer
from worker.runtime.leases import lease_key, members_key


def worker(
    url: str, route: dict[str, Any], consumer: str, **settings: Any
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
    env.update(
        PYTHONPATH=str(ROOT),
        BENCH_SLEEP_S=str(settings.pop("sleep", 0.0)),
        SYNCWORKER_REDIS_URL=url,
        SYNCWORKER_GROUP="bench",
        SYNCWORKER_CONSUMER=consumer,
        SYNCWORKER_ROUTES=json.dumps([{"handler": "bench.handlers:Sleep", **route}]),
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


def wait_until(check: Any, timeout: float, poll: float = 0.005) -> float:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("not done in time")
        time.sleep(poll)
    return time.perf_counter()


def fill(redis: Redis, stream: str, parts: int, entries: int, keys: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for n in range(entries):
        key = f"k{n % keys}"
        fields = {"type": "t", "key": key, "data": "{}", "version": str(n // keys + 1)}
        pipe.xadd(stream_for(stream, key, parts), fields)  # type: ignore[arg-type]
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


def started_reading(redis: Redis, names: tuple[str, ...]) -> bool:
    for name in names:
        try:
            groups = redis.xinfo_groups(name)
        except Exception:
            continue
        if any(g["name"] == b"bench" and g["entries-read"] for g in groups):
            return True
    return False


def drained(redis: Redis, names: tuple[str, ...]) -> bool:
    for name in names:
        try:
            info = {g["name"].decode(): g for g in redis.xinfo_groups(name)}
        except Exception:
            return False
        group = info.get("bench")
        if group is None or group["pending"] or group["lag"]:
            return False
    return True


def owners(redis: Redis, names: tuple[str, ...]) -> list[str | None]:
    values = [redis.get(lease_key(n, "bench")) for n in names]
    return [None if v is None else bytes(v).decode() for v in values]


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def drain_once(
    args: argparse.Namespace, server: RedisServer, redis: Redis, mode: Any, n: int
) -> float:
    stream = f"tp-{mode}-{n}"
    names = partition_names(stream, args.partitions)
    fill(redis, stream, args.partitions, args.entries, args.keys)
    route = {"stream": stream, "partitions": args.partitions, "ordered": mode}
    if not args.sleep:
        route["handler"] = "bench.handlers:Noop"
    proc = worker(server.url, route, "tp", sleep=args.sleep, lease_ttl=args.lease_ttl)
    try:
        started = wait_until(lambda: started_reading(redis, names), 120, poll=0.002)
        ended = wait_until(lambda: drained(redis, names), 600, poll=0.02)
    finally:
        stop(proc)
    return ended - started


def throughput(args: argparse.Namespace, server: RedisServer, redis: Redis) -> None:
    """Each mode `--rounds` times, interleaved (so load from elsewhere hits all alike)."""
    modes: tuple[Any, ...] = (False, True, "strict")
    took: dict[Any, list[float]] = {m: [] for m in modes}
    for n in range(args.rounds):
        for mode in modes:
            took[mode].append(drain_once(args, server, redis, mode, n))
    for mode in modes:
        label = {False: "unordered", True: "ordered", "strict": "strict"}[mode]
        rates = sorted(args.entries / t for t in took[mode])
        print(
            f"  {label:10} {args.entries} events: median {rates[len(rates) // 2]:8.0f} msg/s "
            f"(runs: {', '.join(f'{r:.0f}' for r in rates)})"
        )


def takeover(args: argparse.Namespace, server: RedisServer, redis: Redis) -> None:
    stream = "takeover"
    names = partition_names(stream, args.partitions)
    route = {"stream": stream, "partitions": args.partitions, "ordered": True}
    procs = {c: worker(server.url, route, c, lease_ttl=args.lease_ttl) for c in ("a", "b")}
    try:
        half = len(names) // 2
        wait_until(lambda: sorted(Counter(owners(redis, names)).values()) == [half, half], 60)
        held = owners(redis, names)
        victim = max(("a", "b"), key=held.count)
        survivor = "b" if victim == "a" else "a"
        killed = time.perf_counter()
        procs[victim].kill()
        procs[victim].wait()
        done = wait_until(lambda: owners(redis, names) == [survivor] * len(names), 60)
        print(
            f"  takeover after SIGKILL of a worker holding {held.count(victim)} of "
            f"{len(names)} partitions: {done - killed:.2f} s (lease_ttl {args.lease_ttl} s)"
        )
    finally:
        stop(*procs.values())


def rebalance(args: argparse.Namespace, server: RedisServer, redis: Redis) -> None:
    stream = "rebalance"
    names = partition_names(stream, args.partitions)
    route = {"stream": stream, "partitions": args.partitions, "ordered": True}
    first = worker(server.url, route, "first", lease_ttl=args.lease_ttl)
    second = None
    try:
        wait_until(lambda: owners(redis, names) == ["first"] * len(names), 60)
        second = worker(server.url, route, "second", lease_ttl=args.lease_ttl)
        members = members_key(stream, "bench")
        joined = wait_until(lambda: redis.zscore(members, "second") is not None, 60)
        half = len(names) // 2
        done = wait_until(lambda: owners(redis, names).count("second") == half, 60)
        print(
            f"  rebalance when a second worker joins: {done - joined:.2f} s from its first "
            f"membership until it holds {half} of {len(names)} (lease_ttl {args.lease_ttl} s)"
        )
    finally:
        stop(first, *([second] if second else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per message")
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="drains per mode (median)")
    args = parser.parse_args()
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        try:
            print(f"throughput, one worker, {args.partitions} partitions, sleep {args.sleep} s:")
            throughput(args, server, redis)
            print("leases:")
            takeover(args, server, redis)
            rebalance(args, server, redis)
        finally:
            redis.close()


if __name__ == "__main__":
    main()
