"""The outbox end to end: producers, two relay replicas under SIGKILL, a worker's SQL sink.

Producers commit (or, one in five, roll back) transactions of 1..5 events over 24 aggregate
keys with increasing versions, while the leading relay or its standby is SIGKILLed at seeded
random times and restarted, and a worker (`syncworker run`, the built-in SQL sink) consumes
the stream into a table. Afterwards the stream and the table are held against what committed:

- every committed event is in the stream (by event_id), nothing of a rolled-back one is;
- each key's events appear in commit (= version) order; copies that a killed relay
  published again carry the same fields;
- the events of one transaction are contiguous and in order;
- the sink applied each committed event exactly once (a trigger logs every change to the
  table), and each row ends at its key's last committed version.

Seeded (`SYNCWORKER_CHAOS_SEED` replays the transactions and the kill schedule; the seed is
printed); `SYNCWORKER_CHAOS_LONG=1` produces for 64 s instead of 8. The takeover time after a
SIGKILL of the leader (default lock interval, 1 s) is printed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.outbox import proof
from worker.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

Entry = dict[str, str]


class TestProof:
    @pytest.mark.timeout(600 if proof.LONG else 120)
    async def test_committed_events_reach_the_sink_once_in_order_through_relay_kills(
        self, redis: Redis, redis_server: RedisServer, outbox_dsn: str, pg: Any, table: str,
        names: dict[str, str],
    ) -> None:  # fmt: skip
        """Every committed event is published and applied once, in key and transaction order;
        no rolled-back event is published, whatever the relay kills."""
        seed = proof.SEED
        print(f"\noutbox proof seed {seed} (replay: SYNCWORKER_CHAOS_SEED={seed})")
        rng = random.Random(seed)
        stream, group, suffix = names["stream"], names["group"], names["suffix"]
        aggregates, target = f"agg_{suffix}", f"sink_{suffix}"
        await proof.create_aggregates(outbox_dsn, aggregates)
        await proof.create_target(outbox_dsn, target)
        # Given a sink worker and two relay replicas
        worker = await proof.sink_worker(redis_server, outbox_dsn, stream, group, target).start()
        fleet = proof.RelayFleet(redis_server, outbox_dsn, table, random.Random(rng.random()))
        await fleet.start()
        # When producers commit and roll back while relays are killed and restarted
        ledger = proof.Ledger()
        until = time.monotonic() + proof.PRODUCE_S
        producers = [
            proof.produce(outbox_dsn, table, aggregates, stream, random.Random(rng.random()),
                          ledger, until)
            for _ in range(proof.PRODUCERS)
        ]  # fmt: skip
        began = time.monotonic()
        await asyncio.gather(*producers, fleet.chaos(until))
        await eventually(lambda: _drained(redis, pg, table, stream, group), timeout=60)
        drained_s = time.monotonic() - began
        codes = await fleet.stop()
        worker.signal(15)
        assert await worker.wait(15) == 0
        assert codes == [0, 0]

        # Then
        entries = [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in await redis.xrange(stream)
        ]
        committed = ledger.committed()
        _report(ledger, entries, fleet, drained_s)
        assert fleet.kills > 0
        _check_published(entries, ledger)
        _check_key_order(entries, committed)
        _check_transactions_contiguous(entries, committed)
        _check_sink(pg, target, committed)
        inbox = pg.execute("SELECT count(*) FROM syncworker_inbox WHERE stream = %s", (stream,))
        assert inbox.fetchone()[0] == len(entries)  # every entry handled, each once


async def _drained(redis: Redis, pg: Any, table: str, stream: str, group: str) -> bool:
    if pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]:
        return False
    last = await redis.xrevrange(stream, count=1)
    info = next(g for g in await redis.xinfo_groups(stream) if g["name"] == group.encode())
    return bool(last) and info["last-delivered-id"] == last[0][0] and info["pending"] == 0


def _first_copies(entries: list[Entry]) -> list[Entry]:
    seen: set[str] = set()
    firsts = []
    for e in entries:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            firsts.append(e)
    return firsts


def _check_published(entries: list[Entry], ledger: proof.Ledger) -> None:
    committed = {eid for tx in ledger.committed() for eid, _, _ in tx.events}
    rolled_back = {eid for tx in ledger.rolled_back() for eid, _, _ in tx.events}
    published = {e["event_id"] for e in entries}
    assert committed - published == set(), "committed events missing from the stream"
    assert published & rolled_back == set(), "events of rolled-back transactions published"
    assert published <= committed
    copies: dict[str, Entry] = {}
    for e in entries:
        assert copies.setdefault(e["event_id"], e) == e, "a republished copy differs"


def _check_key_order(entries: list[Entry], committed: list[proof.Tx]) -> None:
    """Each key's versions, in stream order of first copies, are 1, 2, ... its last."""
    last: dict[str, int] = defaultdict(int)
    for tx in committed:
        for _, key, version in tx.events:
            last[key] = max(last[key], version)
    seen: dict[str, list[int]] = defaultdict(list)
    for e in _first_copies(entries):
        seen[e["key"]].append(int(e["version"]))
    assert dict(seen) == {key: list(range(1, n + 1)) for key, n in last.items()}


def _check_transactions_contiguous(entries: list[Entry], committed: list[proof.Tx]) -> None:
    position = {e["event_id"]: i for i, e in enumerate(_first_copies(entries))}
    split = []
    for tx in committed:
        at = [position[eid] for eid, _, _ in tx.events]
        if at != list(range(at[0], at[0] + len(at))):
            split.append((tx.id, at))
    assert split == [], f"{len(split)} transactions not contiguous, e.g. {split[:3]}"


def _check_sink(pg: Any, target: str, committed: list[proof.Tx]) -> None:
    expected = Counter((key, version, tx.id) for tx in committed for _, key, version in tx.events)
    log = pg.execute(f"SELECT key, version, tx FROM {target}_log").fetchall()
    applied = Counter((k, int(v), t) for k, v, t in log)
    assert applied - expected == Counter(), "effects applied twice (or never committed)"
    assert expected - applied == Counter(), "committed events never applied"
    final: dict[str, tuple[int, str]] = {}
    for tx in committed:
        for _, key, version in tx.events:
            if version > final.get(key, (0, ""))[0]:
                final[key] = (version, tx.id)
    rows = pg.execute(f"SELECT key, version, tx FROM {target}").fetchall()
    assert {k: (int(v), t) for k, v, t in rows} == final


def _report(
    ledger: proof.Ledger, entries: list[Entry], fleet: proof.RelayFleet, drained_s: float
) -> None:
    committed = ledger.committed()
    events = sum(len(tx.events) for tx in committed)
    takeovers = fleet.takeovers
    print(
        f"outbox proof: {len(committed)} transactions committed ({events} events), "
        f"{len(ledger.rolled_back())} rolled back; {len(entries)} entries "
        f"({len(entries) - len({e['event_id'] for e in entries})} republished copies); "
        f"{fleet.kills} relay SIGKILLs; drained {drained_s:.1f}s after the first commit"
    )
    if takeovers:
        print(
            f"outbox takeover after SIGKILL of the leader (lock interval 1 s): "
            f"median {statistics.median(takeovers):.2f}s, max {max(takeovers):.2f}s, "
            f"n={len(takeovers)}"
        )
