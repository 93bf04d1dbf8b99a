"""`python -m bench.sinks [--quick] [--out DIR]`: the built-in sinks against raw loops.

Each sink (projection, relay, SQL) runs in a real Worker; its raw loop (see
`bench.sink_contenders`) does the same effect as simply as it can while still acknowledging
only after it. Every contender drains a fresh consumer group over one stream of 100,000
events over 10,000 keys (~150-byte JSON, versions increasing per key; `--quick`: 20,000),
writing under a prefix (and a table) of its own. Runs go in rounds, one run of each
contender per round, and each figure is the median of the rounds.

Printed per contender: msg/s; worker CPU µs per message; Redis commands per message (INFO
commandstats, commands inside scripts included, the harness's own polling excluded); Redis
requests per message (commands or pipelines the contender wrote: its round trips); and for
SQL, PostgreSQL transactions per message (`xact_commit` of pg_stat_database).

Needs a PostgreSQL server (SYNCWORKER_TEST_POSTGRES_DSN, default postgres@127.0.0.1:5432);
creates and drops a database of its own. Writes `<out>/sinks.md` and `<out>/sinks.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from redis import Redis

from bench import report
from bench.harness import ROOT, cpu_seconds, wait_done
from worker.redis_server import RedisServer

ADMIN_DSN = os.environ.get(
    "SYNCWORKER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
KEYS = 10_000

CONTENDERS: list[tuple[str, str, list[str]]] = [
    # (label, label of the raw loop it is compared with, arguments)
    ("raw projection loop", "", ["raw-projection"]),
    ("projection sink", "raw projection loop", ["worker", "--sink", "projection"]),
    ("raw relay loop", "", ["raw-relay"]),
    ("relay sink", "raw relay loop", ["worker", "--sink", "relay"]),
    ("raw SQL loop (executemany)", "", ["raw-sql"]),
    ("raw SQL loop (unnest)", "", ["raw-sql-unnest"]),
    ("SQL sink", "raw SQL loop (executemany)", ["worker", "--sink", "sql"]),
]

VARIANTS: list[tuple[str, str, list[str]]] = [
    # With --variants: the sinks with batches as large as the raw loops' reads.
    (f"{label}, batch_max 500", baseline, [*args, "--batch-max", "500"])
    for label, baseline, args in CONTENDERS
    if args[0] == "worker"
]


def payload(i: int) -> bytes:
    """About 150 bytes of JSON, different for every entry."""
    body = {
        "order_id": f"ord-{i:09d}",
        "customer_id": f"cus-{i % 100_000:06d}",
        "amount_cents": 1000 + i % 90_000,
        "currency": "EUR",
        "status": "paid",
        "items": 1 + i % 7,
        "note": f"bench event {i:08d} of the sinks",
    }
    return json.dumps(body, separators=(",", ":")).encode()


def fill(redis: Redis, stream: str, count: int) -> str:
    """`count` order.paid events over KEYS keys, each key's versions 1, 2, ... in order."""
    last = b""
    for start in range(0, count, 5_000):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(start + 5_000, count)):
            pipe.xadd(
                stream,
                {
                    b"type": b"order.paid",
                    b"key": b"order-%d" % (i % KEYS),
                    b"version": b"%d" % (i // KEYS + 1),
                    b"data": payload(i),
                },
            )
        last = pipe.execute()[-1]
    return str(last.decode())


def commands(redis: Redis) -> int:
    """Redis commands run so far, but for the harness's own polling and counting."""
    stats = redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_xinfo", "cmdstat_info")
    )


def commits(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def one_run(
    redis: Redis, url: str, dsn: str, stream: str, last_id: str, count: int, args: list[str]
) -> dict[str, Any]:
    """Drain a fresh group with one contender; its rate, CPU and round trips."""
    group, prefix = "g-" + uuid.uuid4().hex[:8], "b" + uuid.uuid4().hex[:8]
    redis.xgroup_create(stream, group, id="0")
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        # fmt: off
        process = subprocess.Popen(
            [
                sys.executable, "-m", "bench.sink_contenders", *args, "--url", url,
                "--stream", stream, "--group", group, "--prefix", prefix, "--dsn", dsn,
                "--stats", str(stats_path),
            ],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        # fmt: on
        assert process.stdin is not None and process.stdout is not None
        try:
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"contender {args} did not start: {line!r}")
            if args[0] == "worker" and "sql" in args:
                time.sleep(0.5)  # let the pool connect before timing, as a running worker has
            before = (commands(redis), commits(dsn), cpu_seconds(process.pid))
            started = time.perf_counter()
            process.stdin.write("go\n")
            process.stdin.flush()
            finished = wait_done(redis, stream, group, last_id, timeout=900)
            after = (commands(redis), commits(dsn), cpu_seconds(process.pid))
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=60)
        requests = json.loads(stats_path.read_text())["requests"] if stats_path.exists() else 0
    redis.xgroup_destroy(stream, group)
    for key in redis.scan_iter(match=prefix + "*", count=5_000):
        redis.unlink(key)
    seconds = finished - started
    return {
        "rate": count / seconds,
        "cpu_us": (after[2] - before[2]) / count * 1e6,
        "commands": (after[0] - before[0]) / count,
        "requests": requests / count,
        "commits": (after[1] - before[1]) / count,
    }


def run(count: int, repeat: int, only: list[str], variants: bool = False) -> dict[str, Any]:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "syncworker_bench_" + uuid.uuid4().hex[:8]
    params = conninfo_to_dict(ADMIN_DSN)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    contenders = CONTENDERS + (VARIANTS if variants else [])
    wanted = [c for c in contenders if not only or any(o in c[0] for o in only)]
    results: dict[str, Any] = {"machine": report.machine(), "entries": count, "repeat": repeat}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin, RedisServer() as server:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            redis = Redis.from_url(server.url)
            stream = "bench:sinks"
            last_id = fill(redis, stream, count)
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in wanted}
            for n in range(repeat):
                for label, _, args in wanted:
                    print(f"== round {n + 1}: {label}", file=sys.stderr, flush=True)
                    runs[label].append(
                        one_run(redis, server.url, dsn, stream, last_id, count, args)
                    )
            redis.close()
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    rows = []
    for label, baseline, _ in wanted:
        median = {k: statistics.median(r[k] for r in runs[label]) for k in runs[label][0]}
        rows.append(
            {
                "label": label,
                "baseline": baseline,
                **median,
                "runs": [round(r["rate"]) for r in runs[label]],
            }
        )
    by_label = {row["label"]: row for row in rows}
    for row in rows:
        base = by_label.get(row["baseline"])
        row["ratio"] = row["rate"] / base["rate"] if base else None
    results["rows"] = rows
    return results


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"{results['entries']:,} events over {KEYS:,} keys, medians of {results['repeat']} "
        f"interleaved runs; {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"Redis {m['redis']}, load {m['load']}.",
        "",
        "| contender | msg/s (runs) | vs raw loop | CPU µs/msg | Redis commands/msg "
        "| Redis round trips/msg | PostgreSQL commits/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        runs = ", ".join(f"{x:,}" for x in r["runs"])
        lines.append(
            f"| {r['label']} | {r['rate']:,.0f} ({runs}) | {ratio} | {r['cpu_us']:.0f} "
            f"| {r['commands']:.2f} | {r['requests']:.3f} | {r['commits']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sinks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 events, one round")
    parser.add_argument("--entries", type=int, help="events in the stream (default 100,000)")
    parser.add_argument("--repeat", type=int, help="rounds (default 3)")
    parser.add_argument("--only", default="", help="comma-separated label parts to run")
    parser.add_argument("--out", default="docs/bench", help="where sinks.md/json go")
    parser.add_argument("--variants", action="store_true", help="also sinks with batch_max 500")
    args = parser.parse_args(argv)
    count = args.entries or (20_000 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 3)
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    results = run(count, repeat, only, args.variants)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sinks.json").write_text(json.dumps(results, indent=1, default=str))
    text = table(results)
    (out / "sinks.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
