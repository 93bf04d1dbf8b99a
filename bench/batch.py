"""`python -m bench.batch`: a no-op batch handler against the per-message no-op handler.

Two measurements, each contender in its own process against a redis-server started here:

- latency: a producer at a fixed rate (default 2,000 msg/s); per-entry time from append
  (entry id) to acknowledgement, p50/p99/p999. A batch waits `batch_wait` for more only
  while another batch of its stream runs, so at rates the handler keeps up with, its latency
  should be that of single messages (the goal: p99 within 1.5x).
- throughput: a pre-filled backlog drained as fast as possible (msg/s).

Runs are taken in rounds (one run per contender each) and the best is reported, as in
`python -m bench`. On a busy machine the spread between runs dwarfs the difference between
the contenders; `--together` runs both at once instead, each on its own stream with its own
producer, so that every run puts both through the same minute of the machine, and reports
each run's pair and the median of the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

from redis import Redis

from bench.harness import ROOT, Contender, Streams, _text, _url, wait_done
from bench.sections import Sizes, _latency_run, _percentiles, interleaved_best
from worker.redis_server import RedisServer

CONTENDERS: list[tuple[str, list[str]]] = [
    ("per-message no-op (uvloop)", ["syncworker", "--loop", "uvloop", "--handler", "noop"]),
    ("batch no-op (uvloop)", ["syncworker", "--loop", "uvloop", "--handler", "noop_batch"]),
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    p.add_argument("--rate", type=float, default=2_000.0, help="producer rate (msg/s)")
    p.add_argument("--seconds", type=float, default=10.0, help="producer duration")
    p.add_argument("--repeat", type=int, default=2, help="runs per contender (best kept)")
    p.add_argument("--entries", type=int, default=100_000, help="throughput backlog")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--together", action="store_true", help="run both contenders at once")
    return p


def latency(redis: Redis, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    sizes = Sizes(latency_rate=args.rate, latency_seconds=args.seconds)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in CONTENDERS}
    for _ in range(args.repeat):
        for label, contender in CONTENDERS:
            runs[label].append(_latency_run(redis, sizes, label, contender))
    best: dict[str, dict[str, Any]] = {}
    for label, done in runs.items():
        best[label] = min(done, key=lambda r: r["id"]["p99"])
        best[label]["p99_runs"] = [r["id"]["p99"] for r in done]
    return best


def together(redis: Redis, args: argparse.Namespace) -> list[dict[str, dict[str, float]]]:
    """Each run: both contenders at once, each with its own stream and producer."""
    results = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs = []
            for label, contender in CONTENDERS:
                stream = "bench:batch:" + uuid.uuid4().hex[:6]
                redis.xgroup_create(stream, "g", id="$", mkstream=True)
                path = Path(tmp) / f"{len(runs)}.bin"
                consumer = Contender(
                    [*contender[:1], "--url", _url(redis), "--stream", stream, "--group", "g",
                     "--latencies", str(path), *contender[1:]]
                )  # fmt: skip
                runs.append((label, stream, path, consumer))
            for *_, consumer in runs:
                consumer.go()
            time.sleep(0.5)  # connected and blocked in their first reads
            producers = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.producer", _url(redis), stream,
                     str(args.rate), str(args.seconds)],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                )
                for _, stream, _, _ in runs
            ]  # fmt: skip
            for producer in producers:
                producer.wait()
            row = {}
            for label, stream, path, consumer in runs:
                last_id = _text(redis.xinfo_stream(stream)["last-generated-id"])
                wait_done(redis, stream, "g", last_id, 60)
                consumer.stop()
                values = array("d")
                values.frombytes(path.read_bytes())
                redis.delete(stream)
                acked, by_id = values[0::3], values[1::3]
                row[label] = _percentiles(sorted(a - i for a, i in zip(acked, by_id, strict=True)))
            results.append(row)
    return results


def print_together(rows: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    (single, batch) = (label for label, _ in CONTENDERS)
    print(f"latency, both at once, {args.rate:.0f} msg/s each for {args.seconds:.0f} s (ms):")
    for n, row in enumerate(rows, 1):
        s, b = row[single], row[batch]
        print(
            f"  run {n}: per-message p50 {s['p50']:6.2f} p99 {s['p99']:6.2f} | "
            f"batch p50 {b['p50']:6.2f} p99 {b['p99']:6.2f} | p99 ratio {b['p99'] / s['p99']:.2f}"
        )
    ratios = [row[batch]["p99"] / row[single]["p99"] for row in rows]
    print(f"  median p99 ratio (batch / per-message): {statistics.median(ratios):.2f}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        if args.together:
            print_together(together(redis, args), args)
            redis.close()
            return 0
        rows = latency(redis, args)
        print(f"latency at {args.rate:.0f} msg/s for {args.seconds:.0f} s (ms, append to ack):")
        for label, row in rows.items():
            pct = row["id"]
            runs = ", ".join(f"{p:.2f}" for p in row["p99_runs"])
            print(
                f"  {label:30} p50 {pct['p50']:6.2f}  p99 {pct['p99']:6.2f}  "
                f"p999 {pct['p999']:6.2f}  max {pct['max']:7.2f}  (p99 of runs: {runs})"
            )
        (single, batch) = (rows[label]["id"]["p99"] for label, _ in CONTENDERS)
        print(f"  batch p99 / per-message p99 = {batch / single:.2f}")
        if not args.skip_throughput:
            streams = Streams(redis)
            jobs = {label: (args.entries, contender) for label, contender in CONTENDERS}
            best = interleaved_best(redis, streams, jobs, args.repeat)
            print(f"throughput, backlog of {args.entries:,} (msg/s):")
            for label, row in best.items():
                print(f"  {label:30} {row['rate']:10,.0f}  (runs: {row['runs']})")
            streams.drop()
        redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
