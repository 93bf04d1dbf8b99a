"""Ordered routes: each partition runs on one worker of the fleet at a time, under a lease.

Per-key order inside one process comes from the lanes; across the fleet it comes from here.
The partitions of routes with `ordered = true` (or `"strict"`) are not read by the common read
loop nor taken over by the common takeover scan. Instead, every `lease_ttl / 4`:

1. each worker refreshes its membership of the logical stream and counts the live members;
2. it renews its leases (`worker.runtime.leases`); a lease it could not renew is *lost*;
3. a worker holding more than its fair share, ceil(N / members), releases the surplus: it
   stops reading those partitions, lets their entries in flight finish, then gives the lease
   back; one holding less takes free partitions.

On taking a partition, the worker first claims every entry pending in it, whoever holds it
(the previous owner stopped: its lease is gone), and queues them in stream order before it
reads anything new; the lanes then run each key's entries in that order. A worker reads a
partition only while its lease has more left than one blocking read takes, so no read can
deliver entries after the lease ran out.

Every turn the owner also takes again the entries of its partitions that are pending and idle
with nobody running them: a failover lost their acknowledgement (or claim), and no peer may
take them while the partition is leased.

When a lease is lost (Redis unreachable for three quarters of `lease_ttl`, or taken), the
worker stops the partition at once, before Redis lets the lease go: it stops reading it,
cuts off handler calls running its entries (as a handler timeout does; this needs
`handler_timeout`, and cannot stop a plain function's thread), and drops its queued entries,
which stay pending for the next owner. Entries queued before a loss carry the old tenure and
never run, even if the worker takes the partition again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.connection import REDIS_DOWN, text
from worker.handler import Handler
from worker.message import Message
from worker.runtime.claims import Claims, Guard
from worker.runtime.deadlines import Deadlines
from worker.runtime.leased_reader import create_groups, read_leased
from worker.runtime.leases import Lease, LeaseClient, fair_share
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.policy import RetryPolicy
from worker.runtime.retries import PoisonMessage
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.runtime.strict import StrictKeys
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runtime.ordered")

Process = Callable[[Message], Awaitable[None]]
ProcessBatch = Callable[[list[Message]], Awaitable[None]]
PENDING_PAGE = 500


@dataclass(frozen=True, slots=True)
class OrderedStream:
    """One logical stream of an ordered route, with its partitions."""

    logical: str
    partitions: tuple[str, ...]
    strict: bool


def ordered_streams(handlers: Sequence[Handler]) -> list[OrderedStream]:
    """The ordered logical streams the handlers are routed to."""
    found: dict[str, OrderedStream] = {}
    for h in handlers:
        if not h.ordered:
            continue
        per = h.partitions
        for index, logical in enumerate(h.logical_streams):
            parts = h.streams[index * per : (index + 1) * per]
            found[logical] = OrderedStream(logical, parts, h.ordered == "strict")
    return list(found.values())


class Ordered:
    """Leases, reads and gates the partitions of ordered routes (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        read_redis: Redis,
        settings: WorkerSettings,
        streams: list[OrderedStream],
        ledger: Ledger,
        settler: Settler,
        policy: RetryPolicy,
        gate: ReadGate,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.read_redis = read_redis
        self.settings = settings
        self.logical = streams
        self.ledger = ledger
        self.settler = settler
        self.policy = policy
        self.gate = gate
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self.streams = frozenset(p for s in streams for p in s.partitions)
        self._logical_of = {p: s.logical for s in streams for p in s.partitions}
        self._strict_streams = frozenset(p for s in streams if s.strict for p in s.partitions)
        self.leases = LeaseClient(redis, settings.group, settings.consumer, settings.lease_ttl)
        self.claims = Claims(redis, settings.group, settings.consumer, stats)
        self.strict = StrictKeys(ledger)
        self.owned: dict[str, Lease] = {}
        self.releasing: set[str] = set()
        self._tenure: dict[str, int] = dict.fromkeys(self.streams, 0)
        self._queued: dict[tuple[str, str], tuple[int, Message]] = {}
        self.interval = settings.lease_ttl / 4
        self.block_s = min(settings.block, settings.lease_ttl / 8)
        self.submit: Callable[[Message], None] = lambda msg: None
        self.deadlines: Deadlines | None = None
        self.stopping = False
        """Shutdown began: no new reads, no acquisitions, no rebalancing (renewals go on)."""
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._taking: set[str] = set()
        """Partitions whose pending entries are being claimed: not read until they are."""
        self.reading_now: frozenset[str] = frozenset()
        """The partitions of the read in flight (a release waits for it to return)."""

    # Wiring ------------------------------------------------------------------------------

    def wrap_submit(self, submit: Callable[[Message], None]) -> Callable[[Message], None]:
        """Record the tenure each ordered entry is queued under, then queue it."""
        streams, queued, tenure = self.streams, self._queued, self._tenure

        def submit_ordered(msg: Message) -> None:
            if msg.stream in streams:
                queued[(msg.stream, msg.id)] = (tenure[msg.stream], msg)
            submit(msg)

        self.submit = submit_ordered
        return submit_ordered

    def wrap_process(self, process: Process) -> Process:
        """Run an ordered entry only while its partition is leased, under its tenure."""
        streams, strict = self.streams, self._strict_streams

        async def process_ordered(msg: Message) -> None:
            if msg.stream not in streams:
                await process(msg)
                return
            if not self.current(msg):
                self._discard(msg)
                return
            if msg.stream in strict:
                for stale in await self.strict.run(msg, run_one, self.current):
                    self._discard(stale)
            else:
                await process(msg)
                self._done(msg)

        async def run_one(msg: Message) -> None:
            await process(msg)
            self._done(msg)

        return process_ordered

    def wrap_batch(self, process_batch: ProcessBatch) -> ProcessBatch:
        """Run a batch's ordered entries only while their partition is leased, under its
        tenure; the others stay pending for the partition's owner. (Strict routes take no
        batch handlers: `worker.registry.validate`.)"""
        streams = self.streams

        async def process_ordered(msgs: list[Message]) -> None:
            if msgs[0].stream not in streams:  # a batch holds entries of one stream
                await process_batch(msgs)
                return
            run = []
            for msg in msgs:
                if self.current(msg):
                    run.append(msg)
                else:
                    self._discard(msg)
            if run:
                await process_batch(run)
                for msg in run:
                    self._done(msg)

        return process_ordered

    def current(self, msg: Message) -> bool:
        """May `msg` run now: its partition leased and valid, and it queued in this tenure?"""
        lease = self.owned.get(msg.stream)
        if lease is None or lease.remaining() <= 0:
            return False
        seen = self._queued.get((msg.stream, msg.id))
        return seen is not None and seen[1] is msg and seen[0] == self._tenure[msg.stream]

    def _done(self, msg: Message) -> None:
        seen = self._queued.get((msg.stream, msg.id))
        if seen is not None and seen[1] is msg:
            del self._queued[(msg.stream, msg.id)]
        if msg.stream not in self.owned or seen is None or seen[0] != self._tenure[msg.stream]:
            self._forget_waiting(msg.stream, msg.id)  # failed after a loss: the next owner's

    def _discard(self, msg: Message) -> None:
        """A stale entry: not run here; it stays pending for the partition's owner."""
        seen = self._queued.get((msg.stream, msg.id))
        if seen is not None and seen[1] is msg:
            del self._queued[(msg.stream, msg.id)]
        held = self.ledger.held.get(msg.stream)
        if held is not None and held.get(msg.id) is msg:
            self.ledger.drop(msg)

    def _forget_waiting(self, stream: str, message_id: str) -> None:
        entry = self.ledger.waiting.get((stream, message_id))
        if entry is not None:
            self.ledger.forget_waiting(entry)

    # Leases ------------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Every quarter of `lease_ttl`: membership, renewals, rebalance (module doc)."""
        watchdog = asyncio.create_task(self._watch(), name="syncworker-lease-watchdog")
        try:
            while not self._closed:
                started = time.monotonic()
                try:
                    await self._turn()
                except REDIS_DOWN as exc:
                    log.warning("lease.redis_unavailable", error=str(exc))
                except ResponseError as exc:
                    log.error("lease.refused", error=str(exc))
                self._after_turn()
                await asyncio.sleep(self._next_wait(started))
        finally:
            watchdog.cancel()

    async def _watch(self) -> None:
        """Stop partitions whose lease ran out locally, on time even while a renewal hangs
        on an unreachable Redis (a command may wait `redis_timeout`, longer than a lease)."""
        while True:
            self._expire_local()
            await asyncio.sleep(self._next_wait(time.monotonic()))

    def _after_turn(self) -> None:
        self._expire_local()
        self.strict.sweep(self.submit)
        for stream in self.logical:
            owned = sum(1 for p in stream.partitions if p in self.owned)
            self.stats.partitions_owned[stream.logical] = owned

    def _next_wait(self, started: float) -> float:
        now = time.monotonic()
        wait = self.interval - (now - started)
        for lease in self.owned.values():
            wait = min(wait, lease.remaining(now))
        return max(wait, 0.01)

    def _expire_local(self) -> None:
        now = time.monotonic()
        for partition, lease in list(self.owned.items()):
            if lease.remaining(now) <= 0:
                self._lose(partition, "not renewed in time")

    async def _turn(self) -> None:
        lost = await self.leases.renew(list(self.owned.values()))
        for lease in lost:
            self._lose(lease.partition, "taken or expired")
        await self._adopt_orphans()
        if self.stopping:
            return  # draining: keep the leases until the work in flight has finished
        for stream in self.logical:
            members = await self.leases.members(stream.logical)
            fair = fair_share(len(stream.partitions), len(members))
            mine = [p for p in stream.partitions if p in self.owned and p not in self.releasing]
            for partition in mine[fair:]:  # the surplus, from the highest index
                self.releasing.add(partition)
                name = f"syncworker-release-{partition}"
                self._tasks.add(asyncio.create_task(self._release(partition), name=name))
            if len(mine) < fair:
                await self._acquire(stream, members, fair - len(mine))

    async def _acquire(self, stream: OrderedStream, members: list[str], wanted: int) -> None:
        parts = stream.partitions
        # Start where this member's share would be, so peers do not all race for partition 0.
        me = members.index(self.consumer) if self.consumer in members else 0
        start = me * fair_share(len(parts), len(members))
        for step in range(len(parts)):
            if wanted <= 0 or self.stopping:
                return
            partition = parts[(start + step) % len(parts)]
            if partition in self.owned:
                continue
            lease = await self.leases.acquire(partition)
            if lease is None:
                continue
            self.owned[partition] = lease
            self._tenure[partition] += 1
            wanted -= 1
            took = time.monotonic()
            self._taking.add(partition)  # no new entries before the pending ones are queued
            try:
                claimed = await self._take_pending(partition)
            except BaseException:
                # Reading it now could overtake what was not claimed: give it back whole.
                self._lose(partition, "claiming its pending entries failed")
                with contextlib.suppress(*REDIS_DOWN, ResponseError):
                    await self.leases.release(partition)
                raise
            finally:
                self._taking.discard(partition)
            log.info(
                "lease.acquired",
                partition=partition,
                stream=stream.logical,
                pending_taken=claimed,
                claim_s=round(time.monotonic() - took, 3),
            )

    async def _adopt_orphans(self) -> None:
        """Take again the entries pending in an owned partition that this worker neither
        holds nor waits to retry, idle for `claim_idle`: their acknowledgement was lost
        (a failover to a replica that lacked it), or their claim was. Nobody else may take
        them while the partition is leased, so without this they would stay pending for as
        long as this worker keeps the lease. Each ran already (an ack is only sent after
        the handler returned), so running it again behind newer entries of its key only
        meets the handler's dedupe."""
        idle_ms = max(int(self.settings.claim_idle * 1000), 1)
        for partition in list(self.owned):
            if partition in self.releasing or partition in self._taking or self.stopping:
                continue
            try:
                rows = await self.redis.xpending_range(
                    partition, self.group, min="-", max="+", count=PENDING_PAGE, idle=idle_ms
                )
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                continue
            held = self.ledger.held.get(partition, {})
            orphans = [
                r
                for r in rows
                if text(r["message_id"]) not in held
                and (partition, text(r["message_id"])) not in self.ledger.waiting
            ]
            if orphans and partition in self.owned:
                taken = await self._claim_and_queue(partition, orphans)
                log.warning("lease.orphans_taken", partition=partition, entries=taken)

    async def _take_pending(self, partition: str) -> int:
        """Claim everything pending in `partition` and queue it in stream order."""
        taken = 0
        start = "-"
        while True:
            try:
                rows = await self.redis.xpending_range(
                    partition, self.group, min=start, max="+", count=PENDING_PAGE
                )
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                await self._create_groups({partition: ">"})  # flushed: nothing is pending
                return taken
            if not rows:
                return taken
            taken += await self._claim_and_queue(partition, rows)
            if len(rows) < PENDING_PAGE:
                return taken
            start = "(" + text(rows[-1]["message_id"])

    async def _claim_and_queue(self, partition: str, rows: list[Any]) -> int:
        """Claim the pending entries of `rows` not queued in this tenure; queue them in order."""
        taken = 0
        guards = [
            Guard(text(r["message_id"]), text(r["consumer"]), 0)
            for r in rows
            if not self._queued_now(partition, text(r["message_id"]))
        ]
        marks = await self.claims.marks(partition, [g.id for g in guards])
        guards = [Guard(g.id, g.owner, 0, g.id in marks) for g in guards]
        for got in await self.claims.claim(partition, guards):
            if got.fields is None:
                await self.claims.forget_deleted(partition, got.id, "")
                continue
            msg = Message(partition, got.id, got.fields, got.deliveries, self.group)
            self.ledger.hold(msg)
            taken += 1
            if self.policy.over(msg.attempt):
                self.settler.dead_letter(
                    msg, PoisonMessage("attempts exhausted"), "", reason="attempts exhausted"
                )
            else:
                self.submit(msg)
        return taken

    def _queued_now(self, partition: str, message_id: str) -> bool:
        seen = self._queued.get((partition, message_id))
        return seen is not None and seen[0] == self._tenure[partition]

    def _lose(self, partition: str, why: str) -> None:
        """Stop the partition now: the lease is gone, or about to be (module doc)."""
        if self.owned.pop(partition, None) is None:
            return
        self._tenure[partition] += 1
        self.releasing.discard(partition)
        cut = self.deadlines.cut_stream(partition) if self.deadlines is not None else 0
        self._stop_partition(partition)
        self.stats.leases_lost[self._logical_of[partition]] += 1
        log.warning("lease.lost", partition=partition, reason=why, calls_cut_off=cut)

    def _stop_partition(self, partition: str) -> None:
        for (stream, message_id), _ in list(self.ledger.waiting.items()):
            if stream == partition:
                self._forget_waiting(stream, message_id)
        for msg in self.strict.forget(partition):
            self._discard(msg)

    async def _release(self, partition: str) -> None:
        """Hand a surplus partition over: no more reads, in-flight entries finish first."""
        bound = time.monotonic() + max(self.settings.shutdown_timeout, self.interval)
        while partition in self.owned and time.monotonic() < bound:
            # A read sent before the release began may still deliver entries of it: wait for
            # it, or they would stay pending here, behind the next owner's reads.
            held = len(self.ledger.held.get(partition, {})) - self.strict.parked_count(partition)
            if held <= 0 and partition not in self.reading_now:
                break
            await asyncio.sleep(0.02)
        self._tasks.discard(asyncio.current_task())
        if self.owned.pop(partition, None) is None:
            return  # lost meanwhile
        self._tenure[partition] += 1
        self.releasing.discard(partition)
        if self.deadlines is not None:
            self.deadlines.cut_stream(partition)
        self._stop_partition(partition)
        try:
            await self.leases.release(partition)
        except REDIS_DOWN as exc:
            log.warning("lease.release_failed", partition=partition, error=str(exc))
        log.info("lease.released", partition=partition)

    # Reading ---------------------------------------------------------------------------

    def readable(self) -> dict[Any, Any]:
        """The partitions a read may include now: leased, not being released or claimed, and
        with more lease left than the read can block for."""
        now = time.monotonic()
        margin = self.block_s + self.interval / 2
        return {
            p: ">"
            for p, lease in self.owned.items()
            if p not in self.releasing and p not in self._taking and lease.remaining(now) > margin
        }

    async def read(self) -> None:
        """XREADGROUP over the readable partitions until stopped (`leased_reader`)."""
        await read_leased(self)

    async def _create_groups(self, offsets: dict[Any, Any]) -> None:
        await create_groups(self.redis, self.group, self.settings.start_id, offsets)

    # Lifecycle ---------------------------------------------------------------------------

    def stop_reading(self) -> None:
        """Shutdown begins: take nothing new (leases are still renewed while work drains)."""
        self.stopping = True

    async def release_all(self) -> None:
        """Shutdown ends: give every lease back and leave the membership, so that peers take
        the partitions at once rather than after `lease_ttl`."""
        self._closed = True
        for partition in list(self.owned):
            self.owned.pop(partition, None)
            try:
                await self.leases.release(partition)
            except REDIS_DOWN as exc:
                log.warning("lease.release_failed", partition=partition, error=str(exc))
        for stream in self.logical:
            with contextlib.suppress(*REDIS_DOWN):
                await self.leases.members(stream.logical, join=False)
