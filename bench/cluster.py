"""`python -m bench.cluster`: throughput on a 3-primary Redis Cluster beside one redis-server.

One logical stream of `--partitions` partitions (`{cbN:0}` ... `{cbN:5}`, each its own hash
tag; N is the first number that puts the six partitions on the three primaries' slot ranges
two each, so every primary serves a third of the reads and acks) is read by one unordered
route in one consumer group. `--entries` events (~120-byte JSON over 10,000 keys) are
published before the workers start; then 1, 2 or 4 real `syncworker run` processes drain them.

So that every worker is in before the clock starts, the group is created at the end of each
partition (`$`), the workers start with nothing to read, and only once every worker's reads
are blocked waiting is the group moved back to the start (XGROUP SETID 0 ENTRIESREAD 0) and
one more event appended to each partition to wake the blocked reads. Timed from the group's
first read to nothing left to read or acknowledge, as `bench.ordered` does. Redis CPU is the
INFO cpu delta (user + system) of each primary over the same window, as a share of one core;
worker CPU is that of every worker process (/proc) over the same window, per event. Calls of
XREADGROUP, EVALSHA/EVAL and XACK are counted from INFO commandstats of every primary, per
drain. `--handler projection` and `--handler relay` run the built-in sinks (batch handlers)
instead of a no-op; what they write is deleted after each drain.

Rounds are interleaved (topology x workers, then again), and the median of `--rounds` is
printed, so load from elsewhere hits every row alike.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from redis import Redis
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from bench.harness import cpu_seconds, entry
from bench.ordered import drained, started_reading, stop, wait_until, worker
from worker.partitions import partition_names, stream_for
from worker.redis_cluster import RedisClusterServers
from worker.redis_server import RedisServer

RELAY_TARGET = "cb-relayed"
HANDLERS: dict[str, dict[str, object]] = {
    "noop": {"handler": "bench.handlers:Noop"},
    "sleep_1ms": {"handler": "bench.handlers:Sleep1ms"},
    # the built-in sinks, batch handlers: entities over 10,000 keys (so over about as many
    # slots), and one target stream (one slot)
    "projection": {
        "handler": "handlers.projection:Projection",
        "options": {"prefix": "cb-order:", "events": {"order.paid": "merge"}},
    },
    "relay": {"handler": "handlers.relay:Relay", "options": {"to": [RELAY_TARGET]}},
}
WRITTEN = ("cb-order:*", "*syncworker:*", f"*{RELAY_TARGET}*")
"""What the sinks write, deleted after each drain."""
WORKERS = (1, 2, 4)
KEYS = 10_000


@dataclass
class Topology:
    """A server set to drain on: its URL, a client for the harness, one client per primary."""

    name: str
    url: str
    client: Redis
    primaries: list[Redis]
    reads_per_worker: int  # blocked XREADGROUPs per idle worker: 1, or one per stream
    rates: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[list[float]]] = field(default_factory=dict)
    worker_us: dict[int, list[float]] = field(default_factory=dict)
    calls: dict[int, list[Counter[str]]] = field(default_factory=dict)

    def cpu_seconds(self) -> list[float]:
        """Used CPU (user + system) of each primary so far."""
        info = [p.info("cpu") for p in self.primaries]
        return [float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in info]

    def command_calls(self) -> Counter[str]:
        """Calls of the commands the table counts so far, over every primary."""
        total: Counter[str] = Counter()
        for primary in self.primaries:
            stats = primary.info("commandstats")
            for name, label in COUNTED.items():
                total[label] += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        return total

    def close(self) -> None:
        for client in [self.client, *self.primaries]:
            client.close()


COUNTED = {"xreadgroup": "reads", "evalsha": "scripts", "eval": "scripts", "xack": "acks"}
"""Commands counted per drain (INFO commandstats), under their column."""


def publish(redis: Redis, stream: str, partitions: int, entries: int) -> None:
    """The backlog, each entry in the partition its key hashes to, pipelined by 1,000."""
    pipe = redis.pipeline(transaction=False)
    for n in range(entries):
        fields = entry(n, KEYS)
        pipe.xadd(stream_for(stream, fields[b"key"], partitions), fields)  # type: ignore[arg-type]
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


def blocked(topo: Topology) -> int:
    """Clients blocked in a read on any primary: every worker's reads, once all are waiting.

    (Redis 7.0 adds a consumer to the group only when a read returns entries, so XINFO
    CONSUMERS cannot tell that a worker is in yet.)
    """
    return sum(int(p.info("clients")["blocked_clients"]) for p in topo.primaries)


def balanced_stream(partitions: int, primaries: int = 3) -> str:
    """The first `cbN` whose partitions spread as evenly as can be over `primaries` primaries
    that split the slots evenly (as `RedisClusterServers` does)."""
    share = REDIS_CLUSTER_HASH_SLOTS // primaries
    for n in range(10_000):
        stream = f"cb{n}"
        owners = Counter(
            min(key_slot(name.encode()) // share, primaries - 1)
            for name in partition_names(stream, partitions)
        )
        if len(owners) == min(primaries, partitions) and max(owners.values()) <= -(
            -partitions // primaries
        ):
            return stream
    raise RuntimeError("no evenly spread stream name found")


def clear_written(topo: Topology) -> None:
    """Delete what a sink wrote (entities, markers, counters, the relayed stream)."""
    for primary in topo.primaries:
        for pattern in WRITTEN:
            keys = list(primary.scan_iter(match=pattern, count=10_000))
            for start in range(0, len(keys), 1_000):
                pipe = primary.pipeline(transaction=False)
                for key in keys[start : start + 1_000]:
                    pipe.delete(key)
                pipe.execute()


def drain_once(args: argparse.Namespace, topo: Topology, workers: int) -> None:
    stream = balanced_stream(args.partitions)  # deleted after each drain, so reused
    names = partition_names(stream, args.partitions)
    redis = topo.client
    publish(redis, stream, args.partitions, args.entries)
    for name in names:
        redis.xgroup_create(name, "bench", id="$")
    route = {"stream": stream, "partitions": args.partitions, **HANDLERS[args.handler]}
    procs = [worker(topo.url, route, f"w{n}") for n in range(workers)]
    try:
        reads = workers * topo.reads_per_worker
        wait_until(lambda: blocked(topo) >= reads, 120, poll=0.02)
        cpu_before = topo.cpu_seconds()
        calls_before = topo.command_calls()
        workers_before = sum(cpu_seconds(p.pid) for p in procs)
        for name in names:
            redis.xgroup_setid(name, "bench", "0", entries_read=0)
            redis.xadd(name, entry(args.entries))  # type: ignore[arg-type]  # wakes the reads
        started = wait_until(lambda: started_reading(redis, names), 120, poll=0.002)
        ended = wait_until(lambda: drained(redis, names), 900, poll=0.01)
        cpu = [after - before for before, after in zip(cpu_before, topo.cpu_seconds(), strict=True)]
        calls = topo.command_calls() - calls_before
        worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - workers_before
    finally:
        stop(*procs)
        for name in names:
            redis.delete(name)
        clear_written(topo)
    seconds = ended - started
    events = args.entries + args.partitions
    topo.rates.setdefault(workers, []).append(events / seconds)
    topo.worker_us.setdefault(workers, []).append(worker_cpu / events * 1e6)
    topo.cpu.setdefault(workers, []).append([c / seconds for c in cpu])
    topo.calls.setdefault(workers, []).append(calls)


def report(args: argparse.Namespace, topologies: list[Topology]) -> None:
    print(
        f"\n{args.entries:,} events, {args.partitions} partitions, handler {args.handler}, "
        f"median of {args.rounds}\n"
    )
    print(
        "| topology | workers | msg/s | per worker msg/s | worker CPU µs/msg "
        "| Redis CPU per primary | reads / scripts / XACKs | runs msg/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for topo in topologies:
        for workers in WORKERS:
            rates = topo.rates[workers]
            median = statistics.median(rates)
            cpu = [
                statistics.median(c[i] for c in topo.cpu[workers])
                for i in range(len(topo.primaries))
            ]
            print(
                f"| {topo.name} | {workers} | {median:,.0f} | {median / workers:,.0f} | "
                f"{statistics.median(topo.worker_us[workers]):.0f} | "
                f"{' / '.join(f'{c:.0%}' for c in cpu)} | "
                f"{' / '.join(calls(topo.calls[workers], label) for label in LABELS)} | "
                f"{', '.join(f'{r:,.0f}' for r in sorted(rates))} |"
            )


LABELS = ("reads", "scripts", "acks")


def calls(runs: list[Counter[str]], label: str) -> str:
    """The median calls of one command per drain, over its runs."""
    return f"{statistics.median(run[label] for run in runs):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="noop")
    parser.add_argument("--rounds", type=int, default=3, help="drains per row (median)")
    parser.add_argument("--quick", action="store_true", help="10,000 events, one round")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.rounds = 10_000, 1
    with RedisServer() as single, RedisClusterServers(3) as cluster:
        first = cluster.primaries[0]
        cluster_client = RedisCluster(host="127.0.0.1", port=first.port)
        topologies = [
            Topology(
                "single",
                single.url,
                Redis.from_url(single.url),
                [Redis.from_url(single.url)],
                reads_per_worker=1,
            ),
            Topology(
                "cluster (3 primaries)",
                cluster.url,
                # RedisCluster routes the same commands by key; the helpers only call those.
                cast(Redis, cluster_client),
                [Redis(host="127.0.0.1", port=s.port) for s in cluster.primaries],
                reads_per_worker=args.partitions,
            ),
        ]
        try:
            for n in range(args.rounds):
                for topo in topologies:
                    for workers in WORKERS:
                        drain_once(args, topo, workers)
                        print(
                            f"  round {n + 1} {topo.name} x{workers}: "
                            f"{topo.rates[workers][-1]:,.0f} msg/s",
                            flush=True,
                        )
            report(args, topologies)
        finally:
            for topo in topologies:
                topo.close()


if __name__ == "__main__":
    main()
