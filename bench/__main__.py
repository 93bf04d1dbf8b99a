"""`python -m bench [--quick] [--only SECTIONS] [--out DIR]`: run the benchmarks, print tables.

Writes the tables as Markdown to `<out>/results.md`, the raw figures to `<out>/results.json`
and the concurrency plot to `<out>/throughput-vs-concurrency.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench import handover, report, sections
from bench.harness import Streams
from worker.redis_server import RedisServer

SECTIONS = ("throughput", "concurrency", "latency", "memory", "scaling")
OPTIONAL = ("handover",)
"""Sections run only when named in --only (`python -m bench.handover` runs it alone)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one run each")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", default="docs/bench", help="where results and the plot go")
    parser.add_argument("--latency-seconds", type=float, help="producer duration (default 20)")
    parser.add_argument("--latency-rate", type=float, help="producer rate (default 2000/s)")
    parser.add_argument("--backlog", type=int, help="largest memory backlog (default 1,000,000)")
    parser.add_argument(
        "--appendonly", action="store_true", help="run redis-server with AOF (fsync everysec)"
    )
    args = parser.parse_args(argv)
    sizes = sections.Sizes.quick() if args.quick else sections.Sizes()
    if args.latency_seconds:
        sizes.latency_seconds = args.latency_seconds
    if args.latency_rate:
        sizes.latency_rate = args.latency_rate
    if args.backlog:
        sizes.memory_backlogs = (sizes.memory_backlogs[0], args.backlog)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS) - set(OPTIONAL)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(wanted, sizes, out, appendonly=args.appendonly)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = render(results, " ".join(["python -m bench", *(argv or sys.argv[1:])]))
    (out / "results.md").write_text(text)
    print(text)
    return 0


def run(
    wanted: list[str], sizes: sections.Sizes, out: Path, *, appendonly: bool = False
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": report.machine(), "sizes": vars(sizes)}
    results["machine"]["persistence"] = "AOF, fsync everysec" if appendonly else "none"
    started = time.time()
    with RedisServer(appendonly=appendonly) as server:
        redis = Redis.from_url(server.url)
        streams = Streams(redis)
        ceiling = {"asyncio": 0.0, "uvloop": 0.0}
        if "throughput" in wanted or "concurrency" in wanted:
            _say("throughput: no-op handlers, raw loop, FastStream", results)
            rows = sections.throughput(redis, streams, sizes)
            results["throughput"] = rows
            for row in rows:
                if row["label"] == "syncworker, no-op (asyncio)":
                    ceiling["asyncio"] = row["rate"]
                if row["label"] == "syncworker, no-op (uvloop)":
                    ceiling["uvloop"] = row["rate"]
        if "concurrency" in wanted:
            _say("concurrency: 1 ms handlers", results)
            rows = sections.concurrency(redis, streams, sizes, ceiling)
            results["concurrency"] = rows
            report.plot(rows, out / "throughput-vs-concurrency.png")
        streams.drop()
        if "latency" in wanted:
            _say("latency: fixed-rate producer", results)
            results["latency"] = sections.latency(redis, sizes)
        if "memory" in wanted:
            _say("memory: backlog drained by one `syncworker run`", results)
            results["memory"] = sections.memory(redis, sizes)
        if "scaling" in wanted:
            _say("scaling: 1 and 2 worker processes", results)
            results["scaling"] = sections.scaling(redis, streams, sizes)
            streams.drop()
        if "handover" in wanted:
            _say("handover: graceful hand-over and crash wave", results)
            results["handover"] = handover.run(redis, server.url)
    at_end = report.machine()
    results["machine"]["load_at_end"] = at_end["load"]
    results["machine"]["speed_check_ms_at_end"] = at_end["speed_check_ms"]
    results["machine"]["round_trip_us_at_end"] = at_end["round_trip_us"]
    results["minutes"] = (time.time() - started) / 60
    return results


def render(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    parts = [
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Redis {m['redis']} "
        f"(persistence: {m.get('persistence', 'none')}); "
        f"load average {m['load']} at the start, {m.get('load_at_end', '?')} at the end; "
        f"{results.get('minutes', 0):.1f} minutes.  ",
        "Machine checks (`bench.report`), lower is faster: CPU ms of a fixed Python workload "
        "/ µs of a process-to-process round trip, median (p99): "
        f"{m.get('speed_check_ms', '?')} / {m.get('round_trip_us', '?')} at the start"
        + "".join(
            f", {speed:.0f} / {trip} before {name}"
            for name, speed, trip in m.get("speed_checks", [])
        )
        + f", {m.get('speed_check_ms_at_end', '?')} / {m.get('round_trip_us_at_end', '?')} "
        "at the end.",
    ]
    if "throughput" in results:
        parts += [
            "",
            "### Throughput, no-op handler",
            "",
            report.throughput_table(results["throughput"]),
        ]
    if "concurrency" in results:
        parts += [
            "",
            "### Throughput, 1 ms handler",
            "",
            report.concurrency_table(results["concurrency"]),
        ]
    if "latency" in results:
        parts += ["", "### End-to-end latency", "", report.latency_table(results["latency"])]
    if "memory" in results:
        parts += ["", "### Memory", "", report.memory_table(results["memory"])]
    if "scaling" in results:
        parts += ["", "### Scaling (2 cores)", "", report.scaling_table(results["scaling"])]
    if "handover" in results:
        parts += ["", "### Hand-over and takeover", "", handover.render(results["handover"])]
    parts += ["", "### Against the targets", "", report.targets_table(results)]
    return "\n".join(parts) + "\n"


def _say(text: str, results: dict[str, Any] | None = None) -> None:
    """Announce a section, with the machine's speed as it starts (kept in the results)."""
    speed, round_trip = report.speed_check_ms(), report.round_trip_us()
    if results is not None:
        checks = results["machine"].setdefault("speed_checks", [])
        checks.append([text.split(":")[0], speed, round_trip])
    print(
        f"== {text} (speed check {speed:.0f} ms, round trip {round_trip} µs)",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
