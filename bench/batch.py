"""`python -m bench.batch`: a no-op batch handler against the per-message no-op handler.

Two measurements, each contender in its own process against a redis-server started here:

- latency: a producer at a fixed rate (default 2,000 msg/s); per-entry time from append
  (entry id) to acknowledgement, p50/p99/p999. A batch waits `batch_wait` for more only
  while another batch of its stream runs, so at rates the handler keeps up with, its latency
  should be that of single messages (the goal: p99 within 1.5x).
- throughput: a pre-filled backlog drained as fast as possible (msg/s).

Runs are taken in rounds (one run per contender each) and the best is reported, as in
`python -m bench`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from redis import Redis

from bench.harness import Streams
from bench.sections import Sizes, _latency_run, interleaved_best
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
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
