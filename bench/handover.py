"""`python -m bench.handover`: how fast work that a worker did not finish runs elsewhere.

Two scenarios, each with real `syncworker run` processes on a redis-server of its own:

1. Graceful hand-over. A worker reads a backlog of `--entries` + `--concurrency` entries of a
   `--sleep` handler, starts `--concurrency` of them and gets SIGTERM: it finishes those and
   hands the rest back. A survivor (same concurrency) then runs them. Printed: its time
   against the ideal (entries x sleep / concurrency), how long a new event published a second
   after the survivor started waited, and the attempts the runs had (1: no attempt spent).
2. Crash wave. `--wave` entries are read by three consumers that then die without a word
   (the state SIGKILL leaves: pending, delivery count 1). Once `claim_idle` has passed, a
   survivor drains them as suspects. Printed: its rate against the same worker's rate on the
   same entries read normally (a fresh group).

Rates include each survivor's start-up (about half a second), alike for both runs compared.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from redis import Redis

from bench.harness import ROOT, fill
from worker.redis_server import RedisServer

CLAIM_IDLE_S = 2.0


def worker(
    url: str, stream: str, group: str, consumer: str, sleep: float, **settings: Any
) -> subprocess.Popen[bytes]:
    """`syncworker run` with the `bench.handlers:Sleep` handler on `stream`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
    env.update(
        PYTHONPATH=str(ROOT),
        BENCH_SLEEP_S=str(sleep),
        SYNCWORKER_REDIS_URL=url,
        SYNCWORKER_GROUP=group,
        SYNCWORKER_CONSUMER=consumer,
        SYNCWORKER_ROUTES=f'[{{"stream": "{stream}", "handler": "bench.handlers:Sleep"}}]',
        SYNCWORKER_METRICS_PORT="0",
        SYNCWORKER_LOG_LEVEL="ERROR",
        SYNCWORKER_LOG_FORMAT="json",
        SYNCWORKER_CLAIM_IDLE=str(CLAIM_IDLE_S),
        SYNCWORKER_CLAIM_INTERVAL="0.2",
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


def pending(redis: Redis, stream: str, group: str) -> int:
    return int(redis.xpending(stream, group)["pending"])


def wait_until(check: Any, timeout: float, poll: float = 0.01) -> float:
    """Poll `check` until true; return time.perf_counter() then."""
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError("not done in time")
        time.sleep(poll)
    return time.perf_counter()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def acked(redis: Redis, stream: str, group: str, entry_id: str) -> bool:
    last = next(
        g["last-delivered-id"].decode()
        for g in redis.xinfo_groups(stream)
        if g["name"].decode() == group
    )
    read = tuple(map(int, last.split("-"))) >= tuple(map(int, entry_id.split("-")))
    return read and not redis.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)


def hand_over(
    redis: Redis, url: str, entries: int, sleep: float, concurrency: int
) -> dict[str, Any]:
    stream, group = "bench:handover", "g-handover"
    fill(redis, stream, entries + concurrency)
    redis.xgroup_create(stream, group, id="0")
    options = {"concurrency": concurrency, "batch_size": entries + concurrency}
    first = worker(url, stream, group, "first", sleep, **options)
    wait_until(lambda: pending(redis, stream, group) == entries + concurrency, 30)
    time.sleep(sleep / 2)  # `concurrency` of them are running now
    stop(first)
    released = pending(redis, stream, group)
    started = time.perf_counter()
    survivor = worker(url, stream, group, "survivor", sleep, concurrency=concurrency)
    try:
        time.sleep(1.0)
        probe = redis.xadd(stream, {"type": "probe"}).decode()
        probed = time.perf_counter()
        probe_done = wait_until(lambda: acked(redis, stream, group, probe), 300)
        finished = wait_until(lambda: pending(redis, stream, group) == 0, 300)
    finally:
        stop(survivor)
    attempts = {int(k): int(v) for k, v in redis.hgetall(f"{stream}:attempts").items()}
    redis.delete(stream, f"{stream}:attempts")
    return {
        "handed_back": released,
        "seconds": finished - started,
        "ideal_s": released * sleep / concurrency,
        "new_event_wait_s": probe_done - probed,
        "runs_by_attempt": dict(sorted(attempts.items())),
    }


def crash_wave(
    redis: Redis, url: str, entries: int, sleep: float, concurrency: int
) -> dict[str, Any]:
    stream = "bench:wave"
    fill(redis, stream, entries)
    rates = {}
    for case in ("normal", "crash wave"):
        group = "g-" + case.replace(" ", "-")
        redis.xgroup_create(stream, group, id="0")
        if case == "crash wave":
            for n, count in enumerate((entries // 3, entries // 3, entries)):
                redis.xreadgroup(group, f"dead-{n}", {stream: ">"}, count=count)
            time.sleep(CLAIM_IDLE_S + 0.1)
        started = time.perf_counter()
        survivor = worker(url, stream, group, "survivor", sleep, concurrency=concurrency)
        try:
            last = redis.xinfo_stream(stream)["last-generated-id"].decode()
            finished = wait_until(
                lambda g=group, t=last: (
                    pending(redis, stream, g) == 0 and acked(redis, stream, g, t)
                ),
                600,
            )
        finally:
            stop(survivor)
        rates[case] = entries / (finished - started)
    attempts = {int(k): int(v) for k, v in redis.hgetall(f"{stream}:attempts").items()}
    redis.delete(stream, f"{stream}:attempts")
    return {
        "entries": entries,
        "normal_rate": rates["normal"],
        "wave_rate": rates["crash wave"],
        "ratio": rates["crash wave"] / rates["normal"],
        "runs_by_attempt": dict(sorted(attempts.items())),
    }


def run(redis: Redis, url: str, args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Both scenarios, with the defaults unless `args` says otherwise."""
    args = args or parser().parse_args([])
    return {
        "hand_over": hand_over(redis, url, args.entries, args.sleep, args.concurrency),
        "crash_wave": crash_wave(redis, url, args.wave, args.wave_sleep, args.concurrency),
    }


def render(results: dict[str, Any]) -> str:
    """The figures as two lines of text."""
    h, w = results["hand_over"], results["crash_wave"]
    return (
        f"hand-over: {h['handed_back']} entries handed back, survivor done in "
        f"{h['seconds']:.1f} s (ideal {h['ideal_s']:.1f} s, x{h['seconds'] / h['ideal_s']:.2f}, "
        f"target x3 at most); a new event waited {h['new_event_wait_s']:.2f} s; "
        f"runs by attempt {h['runs_by_attempt']}\n"
        f"crash wave: {w['entries']} abandoned entries drained at {w['wave_rate']:.0f}/s, "
        f"normal {w['normal_rate']:.0f}/s (x{w['ratio']:.2f}, target x0.5 at least); "
        f"runs by attempt {w['runs_by_attempt']}\n"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.handover", description=__doc__)
    p.add_argument("--entries", type=int, default=400, help="entries handed back")
    p.add_argument("--sleep", type=float, default=0.2, help="handler seconds (hand-over)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--wave", type=int, default=6000, help="entries of the crash wave")
    p.add_argument("--wave-sleep", type=float, default=0.02, help="handler seconds (wave)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with RedisServer() as server:
        print(render(run(Redis.from_url(server.url), server.url, args)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
