"""Tables (Markdown, printed and written to a file) and the concurrency plot."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

RAW_GC_TUNED = "raw loop, GC tuned as syncworker run does (uvloop)"
"""The raw loop with syncworker's garbage-collector settings: what that tuning is worth alone."""


def machine() -> dict[str, str]:
    """What the figures came from: CPU, cores, Python, Redis, load at the start."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    redis = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((p.partition("=")[2] for p in redis if p.startswith("v=")), "unknown")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "redis": version,
        "load": load,
        "speed_check_ms": f"{speed_check_ms():.0f}",
        "round_trip_us": round_trip_us(),
    }


def speed_check_ms() -> float:
    """CPU milliseconds of a fixed pure-Python workload (dicts, JSON): best of 3.

    A shared or virtual machine can run at half speed for minutes at a time with no sign in
    the load average. Taken at the start and the end of a run, this says how fast the
    machine was, so that two runs' absolute figures can be compared.
    """
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        table: dict[int, str] = {}
        for i in range(100_000):
            table[i % 1000] = json.dumps({"order": i, "status": "paid"})
        best = min(best, time.process_time() - started)
    return best * 1000


def round_trip_us(count: int = 2000) -> str:
    """Median and 99th percentile µs for a byte to go to another process and back.

    Every Redis command is such a round trip, so latency figures rest on it; on a busy host
    its tail grows from tens to hundreds of microseconds while CPU speed barely moves.
    """
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo process
        ours.close()
        while data := theirs.recv(16):
            theirs.sendall(data)
        os._exit(0)
    theirs.close()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        ours.sendall(b"x")
        ours.recv(16)
        times.append(time.perf_counter() - started)
    ours.close()
    os.waitpid(pid, 0)
    times.sort()
    return f"{statistics.median(times) * 1e6:.0f} (p99 {times[count * 99 // 100] * 1e6:.0f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def throughput_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["contender", "entries", "seconds", "msg/s", "vs raw loop (same event loop)",
         "CPU µs/msg"],
        [
            [r["label"], _rate(r["entries"]), f"{r['seconds']:.2f}", _rate(r["rate"]),
             _pct(r["ratio"]), f"{r['cpu_s'] / r['entries'] * 1e6:.1f}"]
            for r in rows
        ],
    )  # fmt: skip


def concurrency_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["event loop", "concurrency", "entries", "msg/s", "no-op in the same rounds",
         "bound min(c/1 ms, no-op)", "vs bound", "asyncio.sleep alone", "vs sleep alone"],
        [
            [r["loop"], str(r["concurrency"]), _rate(r["entries"]), _rate(r["rate"]),
             "-" if r.get("noop_beside") is None else _rate(r["noop_beside"]),
             _rate(r["bound"]), _pct(r["ratio"]), _rate(r["bare_loop"]),
             _pct(r["rate"] / r["bare_loop"])]
            for r in rows
        ],
    )  # fmt: skip


def latency_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["consumer", "rate", "entries acked", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
         "p50 / p99 / p99.9 ms from producer clock", "p99 ms of every run"],
        [
            [r["label"], f"{r['rate']:,.0f}/s for {r['seconds']:.0f} s", _rate(r["acked"]),
             f"{r['id']['p50']:.2f}", f"{r['id']['p99']:.2f}", f"{r['id']['p999']:.2f}",
             f"{r['id']['max']:.2f}",
             f"{r['sent']['p50']:.2f} / {r['sent']['p99']:.2f} / {r['sent']['p999']:.2f}",
             ", ".join(f"{p:.2f}" for p in r.get("p99_runs", [r["id"]["p99"]]))]
            for r in rows
        ],
    )  # fmt: skip


def memory_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["backlog", "seconds to drain (with process start)", "msg/s", "RSS a quarter of the way",
         "RSS at end", "peak RSS"],
        [
            [_rate(r["backlog"]), f"{r['seconds']:.1f}", _rate(r["backlog"] / r["seconds"]),
             f"{r['rss_at_quarter_mb']:.0f} MB", f"{r['rss_at_end_mb']:.0f} MB",
             f"{r['peak_rss_mb']:.0f} MB"]
            for r in rows
        ],
    )  # fmt: skip


def scaling_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["handler", "entries", "1 process msg/s", "2 processes msg/s", "2 vs 1"],
        [
            [r["label"], _rate(r["entries"]), _rate(r["one"]), _rate(r["two"]),
             f"{r['ratio']:.2f}x"]
            for r in rows
        ],
    )  # fmt: skip


def targets_table(results: dict[str, Any]) -> str:
    """Each target of the performance issue, with the figure from this run beside it."""
    rows: list[list[str]] = []
    by_label = {r["label"]: r for r in results.get("throughput", [])}
    for label, loop in (
        ("syncworker, no-op (uvloop)", "uvloop"),
        ("syncworker, no-op reading msg.data (uvloop)", "uvloop"),
        ("syncworker, no-op (asyncio)", "asyncio"),
    ):
        row = by_label.get(label)
        if row:
            what = label.removeprefix("syncworker, ").rpartition(" (")[0]
            rows.append(
                [
                    f"{what} >= 70 % of the raw loop ({LOOP_ROLE[loop]})",
                    _pct(row["ratio"]),
                    _verdict(row["ratio"] >= 0.7),
                ]
            )
    tuned = by_label.get(RAW_GC_TUNED)
    sync = by_label.get("syncworker, no-op (uvloop)")
    if tuned and sync:
        ratio = sync["rate"] / tuned["rate"]
        rows.append(
            [
                f"no-op >= 70 % of the raw loop with the same GC tuning ({LOOP_ROLE['uvloop']})",
                _pct(ratio),
                _verdict(ratio >= 0.7),
            ]
        )
    fast = [r for r in results.get("throughput", []) if r["label"].startswith("FastStream")]
    if fast and sync:
        best = max(fast, key=lambda r: r["rate"])
        worst = min(fast, key=lambda r: r["rate"])
        for other in (best, worst):
            ratio = sync["rate"] / other["rate"]
            label = f"ahead of {other['label']} (syncworker no-op, uvloop)"
            rows.append([label, f"{ratio:.1f}x", _verdict(ratio > 1.0)])
    for r in sorted(results.get("concurrency", []), key=lambda r: r["loop"] != "uvloop"):
        rows.append(
            [
                f"1 ms handler, concurrency {r['concurrency']} ({LOOP_ROLE[r['loop']]}) "
                ">= 70 % of min(c / 1 ms, no-op)",
                _pct(r["ratio"]),
                _verdict(r["ratio"] >= 0.7),
            ]
        )
    for r in results.get("latency", []):
        if r["label"].startswith("syncworker"):
            p99 = r["id"]["p99"]
            rows.append(
                [
                    f"p99 end-to-end <= 5 ms at {r['rate']:,.0f} msg/s, {r['label']}",
                    f"{p99:.2f} ms",
                    _verdict(p99 <= 5.0),
                ]
            )
    for r in results.get("memory", []):
        rows.append(
            [
                f"peak RSS < 150 MB, backlog {r['backlog']:,}",
                f"{r['peak_rss_mb']:.0f} MB",
                _verdict(r["peak_rss_mb"] < 150),
            ]
        )
    return _table(["target", "this run", "met"], rows)  # fmt: skip


LOOP_ROLE = {"uvloop": "uvloop, the default", "asyncio": "asyncio's loop, the fallback"}
"""How each event loop stands in `syncworker run`: uvloop unless it is missing or refused."""


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput against concurrency for the 1 ms handler, beside the concurrency bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for loop, marker, color in (("uvloop", "o", "tab:blue"), ("asyncio", "s", "tab:green")):
        mine = [r for r in rows if r["loop"] == loop]
        if not mine:
            continue
        levels = [r["concurrency"] for r in mine]
        ax.plot(
            levels,
            [r["rate"] for r in mine],
            marker=marker,
            color=color,
            label=f"syncworker ({loop})",
        )
        ax.plot(
            levels, [r["bare_loop"] for r in mine], marker=marker, linestyle=":", alpha=0.5,
            color=color, label=f"asyncio.sleep(0.001) alone, no Redis ({loop})",
        )  # fmt: skip
    levels = sorted({r["concurrency"] for r in rows})
    bound = {r["concurrency"]: r["bound"] for r in rows if r["loop"] == "uvloop"} or {
        r["concurrency"]: r["bound"] for r in rows
    }
    ax.plot(levels, [bound[c] for c in levels], "k--", label="bound: min(c / 1 ms, no-op rate)")
    ax.plot(levels, [0.7 * bound[c] for c in levels], color="grey", linestyle="-.", alpha=0.6,
            label="70 % of the bound")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency (messages in flight)")
    ax.set_ylabel("messages per second")
    ax.set_title("1 ms handler: throughput against concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
