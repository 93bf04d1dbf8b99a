"""The four benchmarks of docs/performance.md; each returns rows for the report."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from bench.harness import ROOT, Contender, Streams, _url, fill, timed_run, wait_done
from bench.report import RAW_GC_TUNED


@dataclass
class Sizes:
    """How big each benchmark is; `--quick` shrinks them all."""

    entries: int = 200_000
    faststream_per_message: int = 20_000
    repeat: int = 3
    seconds_per_level: float = 2.0
    latency_rate: float = 2_000.0
    latency_seconds: float = 20.0
    latency_repeat: int = 2
    memory_backlogs: tuple[int, ...] = (100_000, 1_000_000)
    scaling_entries: int = 400_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            entries=50_000,
            faststream_per_message=5_000,
            repeat=1,
            seconds_per_level=0.5,
            latency_seconds=3.0,
            latency_repeat=1,
            memory_backlogs=(20_000, 100_000),
            scaling_entries=100_000,
        )


def best_of(
    redis: Redis, streams: Streams, count: int, args: list[str], repeat: int
) -> dict[str, Any]:
    """The fastest of `repeat` runs (the one least disturbed by anything else on the host)."""
    return interleaved_best(redis, streams, {"only": (count, args)}, repeat)["only"]


def interleaved_best(
    redis: Redis, streams: Streams, jobs: dict[str, tuple[int, list[str]]], repeat: int
) -> dict[str, dict[str, Any]]:
    """The fastest of `repeat` runs of each job, taken in rounds of one run per job.

    A shared machine's speed drifts by half or more over minutes. Runs in rounds spread
    each job's samples over the same stretch of time, so that ratios between the jobs
    compare like with like, rather than a fast minute with a slow one.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
    for _ in range(repeat):
        for name, (count, args) in jobs.items():
            runs[name].append(timed_run(redis, streams, count, args))
    return {
        name: {**max(done, key=lambda r: r["rate"]), "runs": [round(r["rate"]) for r in done]}
        for name, done in runs.items()
    }


# 1. Throughput ---------------------------------------------------------------------------

NOOP_CONTENDERS: list[tuple[str, str, list[str]]] = [
    # (label, baseline label for the ratio, contender arguments)
    ("raw redis.asyncio loop (asyncio)", "", ["raw", "--loop", "asyncio"]),
    ("raw redis.asyncio loop (uvloop)", "", ["raw", "--loop", "uvloop"]),
    (
        RAW_GC_TUNED,
        "raw redis.asyncio loop (uvloop)",
        ["raw", "--loop", "uvloop", "--gc-tuning"],
    ),
    ("syncworker, no-op (asyncio)", "raw redis.asyncio loop (asyncio)", ["syncworker"]),
    (
        "syncworker, no-op (uvloop)",
        "raw redis.asyncio loop (uvloop)",
        ["syncworker", "--loop", "uvloop"],
    ),
    (
        "syncworker, no-op reading msg.data (uvloop)",
        "raw redis.asyncio loop (uvloop)",
        ["syncworker", "--loop", "uvloop", "--handler", "noop_data"],
    ),
    (
        "FastStream StreamSub batch=True (asyncio)",
        "raw redis.asyncio loop (asyncio)",
        ["faststream", "--batch", "--concurrency", "1"],
    ),
    (
        "FastStream StreamSub batch=True (uvloop)",
        "raw redis.asyncio loop (uvloop)",
        ["faststream", "--batch", "--concurrency", "1", "--loop", "uvloop"],
    ),
]
FASTSTREAM_PER_MESSAGE: list[tuple[str, str, list[str]]] = [
    (
        "FastStream StreamSub per message (asyncio)",
        "raw redis.asyncio loop (asyncio)",
        ["faststream", "--concurrency", "1"],
    ),
    (
        "FastStream StreamSub per message, max_workers=16 (uvloop)",
        "raw redis.asyncio loop (uvloop)",
        ["faststream", "--concurrency", "16", "--loop", "uvloop"],
    ),
]


def throughput(redis: Redis, streams: Streams, sizes: Sizes) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    jobs = {label: (sizes.entries, args) for label, _, args in NOOP_CONTENDERS}
    best = interleaved_best(redis, streams, jobs, sizes.repeat)
    for label, baseline, _ in NOOP_CONTENDERS:
        rows[label] = {"label": label, "baseline": baseline, **best[label]}
        _progress(rows[label])
    for label, baseline, args in FASTSTREAM_PER_MESSAGE:
        rows[label] = {"label": label, "baseline": baseline}
        rows[label].update(best_of(redis, streams, sizes.faststream_per_message, args, 1))
        _progress(rows[label])
    for row in rows.values():
        base = rows.get(row["baseline"])
        row["ratio"] = row["rate"] / base["rate"] if base else None
    return list(rows.values())


def concurrency(
    redis: Redis, streams: Streams, sizes: Sizes, noop_ceiling: dict[str, float]
) -> list[dict[str, Any]]:
    """1 ms handlers at each concurrency, against min(concurrency / 1 ms, no-op ceiling).

    Where the no-op rate may be the bound (it is within a factor of two of c / 1 ms), it is
    measured again in the same rounds as the 1 ms runs, with as many entries, so that the
    ratio does not compare two different minutes of a drifting machine.
    """
    rows = []
    for loop in ("asyncio", "uvloop"):
        for level in (1, 16, 64, 256):
            # Sized so that each run lasts about `seconds_per_level` at the bound.
            count = min(sizes.entries, max(int(level * 1000 * sizes.seconds_per_level), 500))
            args = ["syncworker", "--handler", "sleep_1ms", "--concurrency", str(level)]
            jobs = {"sleep": (count, [*args, "--loop", loop])}
            if level * 1000.0 > noop_ceiling[loop] / 2:
                jobs["noop"] = (count, ["syncworker", "--loop", loop])
            best = interleaved_best(redis, streams, jobs, sizes.repeat)
            result = best["sleep"]
            ceiling = best["noop"]["rate"] if "noop" in best else noop_ceiling[loop]
            bound = min(level * 1000.0, ceiling)
            row = {
                "label": f"syncworker, 1 ms handler ({loop})",
                "loop": loop,
                "concurrency": level,
                "bound": bound,
                "noop_beside": best["noop"]["rate"] if "noop" in best else None,
                "ratio": result["rate"] / bound,
                "bare_loop": bare_sleep_rate(level, loop),
                **result,
            }
            rows.append(row)
            _progress(row)
    return rows


def bare_sleep_rate(level: int, loop: str, seconds: float = 1.0) -> float:
    """What the event loop alone reaches: `level` tasks looping on asyncio.sleep(0.001)."""
    code = (
        "import asyncio,time,sys\n"
        "async def main(c, s):\n"
        "    n = 0\n"
        "    end = time.perf_counter() + s\n"
        "    async def one():\n"
        "        nonlocal n\n"
        "        while time.perf_counter() < end:\n"
        "            await asyncio.sleep(0.001)\n"
        "            n += 1\n"
        "    await asyncio.gather(*(one() for _ in range(c)))\n"
        "    print(n / s)\n"
        "c, s = int(sys.argv[1]), float(sys.argv[2])\n"
        "if sys.argv[3] == 'uvloop':\n"
        "    import uvloop\n"
        "    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r: r.run(main(c, s))\n"
        "else:\n"
        "    asyncio.run(main(c, s))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(level), str(seconds), loop],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


# 2. Latency ------------------------------------------------------------------------------


LATENCY_CONTENDERS: list[tuple[str, list[str]]] = [
    ("raw redis.asyncio loop (asyncio)", ["raw", "--loop", "asyncio"]),
    ("raw redis.asyncio loop (uvloop)", ["raw", "--loop", "uvloop"]),
    ("syncworker, no-op (asyncio)", ["syncworker", "--loop", "asyncio"]),
    ("syncworker, no-op (uvloop)", ["syncworker", "--loop", "uvloop"]),
]


def latency(redis: Redis, sizes: Sizes) -> list[dict[str, Any]]:
    """A producer at a fixed rate; per-entry time from append to acknowledgement.

    Each consumer runs `latency_repeat` times, in rounds of one run each, and the run with
    the lowest p99 is reported (all p99s are kept in `p99_runs`), as throughput keeps the
    fastest run: the one least disturbed by the rest of the machine.
    """
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in LATENCY_CONTENDERS}
    for _ in range(sizes.latency_repeat):
        for label, args in LATENCY_CONTENDERS:
            runs[label].append(_latency_run(redis, sizes, label, args))
    rows = []
    for done in runs.values():
        best = min(done, key=lambda r: r["id"]["p99"])
        row = {**best, "p99_runs": [round(r["id"]["p99"], 2) for r in done]}
        rows.append(row)
        _progress(row)
    return rows


def _latency_run(redis: Redis, sizes: Sizes, label: str, args: list[str]) -> dict[str, Any]:
    stream = "bench:latency:" + uuid.uuid4().hex[:6]
    group = "g-latency"
    redis.xgroup_create(stream, group, id="$", mkstream=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latencies.bin"
        consumer = Contender(
            [*args[:1], "--url", _url(redis), "--stream", stream, "--group", group,
             "--latencies", str(path), *args[1:]]
        )  # fmt: skip
        consumer.go()
        time.sleep(0.5)  # connected and blocked in its first read
        producer = subprocess.run(
            [sys.executable, "-m", "bench.producer", _url(redis), stream,
             str(sizes.latency_rate), str(sizes.latency_seconds)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        sent = int(producer.stdout)
        last_id = redis.xinfo_stream(stream)["last-generated-id"]
        wait_done(redis, stream, group, _text(last_id), 60)
        consumer.stop()
        values = array("d")
        values.frombytes(path.read_bytes())
    redis.delete(stream)
    acked, by_id, by_sent = values[0::3], values[1::3], values[2::3]
    from_id = sorted(a - i for a, i in zip(acked, by_id, strict=True))
    from_sent = sorted(a - s for a, s in zip(acked, by_sent, strict=True))
    return {
        "label": label,
        "rate": sizes.latency_rate,
        "seconds": sizes.latency_seconds,
        "entries": sent,
        "acked": len(from_id),
        "id": _percentiles(from_id),
        "sent": _percentiles(from_sent),
    }


def _percentiles(sorted_values: list[float]) -> dict[str, float]:
    n = len(sorted_values)

    def at(q: float) -> float:
        return sorted_values[min(int(q * n), n - 1)] * 1000.0 if n else float("nan")

    return {"p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "max": at(1.0)}


# 3. Memory -------------------------------------------------------------------------------


def memory(redis: Redis, sizes: Sizes) -> list[dict[str, Any]]:
    """One `syncworker run` process works through each backlog; its peak RSS is reported."""
    rows = []
    for backlog in sizes.memory_backlogs:
        stream = "bench:memory:" + uuid.uuid4().hex[:6]
        started = time.perf_counter()
        last_id = fill(redis, stream, backlog)
        fill_s = time.perf_counter() - started
        row = {"backlog": backlog, "fill_s": fill_s, **_run_cli_worker(redis, stream, last_id)}
        redis.delete(stream)
        rows.append(row)
        _progress(row)
    return rows


def _run_cli_worker(redis: Redis, stream: str, last_id: str) -> dict[str, Any]:
    group = "g-memory"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "worker.toml"
        config.write_text(
            f'redis_url = "{_url(redis)}"\ngroup = "{group}"\nmetrics_port = 0\n'
            'log_level = "ERROR"\nlog_format = "json"\n'
            f'[[routes]]\nstream = "{stream}"\nhandler = "bench.handlers:Noop"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
        env["PYTHONPATH"] = str(ROOT)
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("syncworker")), "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
        )
        samples: list[int] = []
        started = time.perf_counter()
        try:
            while True:
                status = _status(process.pid)
                samples.append(status["VmRSS"])
                groups = redis.xinfo_groups(stream)
                if groups and _done(groups[0], last_id):
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"syncworker run exited with {process.returncode}")
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            peak_kb = _status(process.pid)["VmHWM"]
        finally:
            process.terminate()
            process.wait(timeout=60)
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "rss_at_quarter_mb": samples[len(samples) // 4] / 1024,
        "rss_at_end_mb": samples[-1] / 1024,
    }


def _done(info: dict[Any, Any], last_id: str) -> bool:
    return int(info["pending"]) == 0 and _text(info["last-delivered-id"]) == last_id


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


# 4. Scaling ------------------------------------------------------------------------------


def scaling(redis: Redis, streams: Streams, sizes: Sizes) -> list[dict[str, Any]]:
    """1 and 2 worker processes in one group on one stream."""
    rows = []
    cases = (
        ("no-op", ["syncworker", "--loop", "uvloop"], sizes.scaling_entries),
        (
            "1 ms handler, concurrency 16",
            ["syncworker", "--loop", "uvloop", "--handler", "sleep_1ms", "--concurrency", "16"],
            sizes.scaling_entries // 10,
        ),
    )
    for label, args, count in cases:
        single = timed_run(redis, streams, count, args, processes=1)
        double = timed_run(redis, streams, count, args, processes=2)
        row = {
            "label": label,
            "entries": count,
            "one": single["rate"],
            "two": double["rate"],
            "ratio": double["rate"] / single["rate"],
        }
        rows.append(row)
        _progress(row)
    return rows


def _progress(row: dict[str, Any]) -> None:
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    print("  ", shown, file=sys.stderr, flush=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
