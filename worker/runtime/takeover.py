"""Takeover: entries abandoned by consumers that stopped, and this name's own leftovers.

Entries idle for `claim_idle` on another consumer (or on an earlier process with this
consumer's name) belong to a process that stopped. Two kinds:

- *Handed back*: a graceful shutdown released them with a mark (`worker.runtime.claims`).
  They are ordinary work: claimed with their delivery count restored (no attempt spent) and
  run through the lanes at full concurrency, once any requested retry delay has passed.
- *Suspects*: their consumer stopped without handing them back, and one of them may be the
  message that killed it. They run in groups with nothing else in flight, halved after each
  crash that bumped them together, and alone at the last attempt (`RetryPolicy.suspect_group`);
  once the count passes `max_attempts` a suspect is dead-lettered without running again.

Running suspects closes the read gate. Every wait behind it is bounded (`wait_bound`): a
handler call that never returns must not stop this process from reading for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from worker.connection import text, tolerate
from worker.message import Message
from worker.runtime.claims import Claimed, Claims, Guard, mark_due_ms
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.policy import RetryPolicy
from worker.runtime.retries import PoisonMessage
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runtime.takeover")

DEFAULT_WAIT_BOUND_S = 300.0
"""Seconds suspects wait for work in flight when handlers have no timeout (arq's default job
timeout); with `handler_timeout` set, the wait is that plus a margin."""


def wait_bound(settings: WorkerSettings) -> float:
    """Seconds takeover waits, with reading stopped, for work in flight to finish."""
    if settings.handler_timeout:
        return settings.handler_timeout + settings.claim_interval + 1.0
    return DEFAULT_WAIT_BOUND_S


@dataclass(slots=True)
class Suspect:
    """A pending entry that no live consumer refreshes, as one scan saw it."""

    stream: str
    id: str
    owner: str
    deliveries: int
    idle_ms: int

    def guard(self) -> Guard:
        return Guard(self.id, self.owner, self.idle_ms)


class Takeover:
    """Scans for abandoned entries every `claim_interval`; runs them (see the module doc)."""

    def __init__(
        self,
        redis: Redis,
        settings: WorkerSettings,
        policy: RetryPolicy,
        streams: tuple[str, ...],
        ledger: Ledger,
        settler: Settler,
        submit: Callable[[Message], None],
        gate: ReadGate,
        reader_alive: Callable[[], bool],
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.policy = policy
        self.streams = streams
        self.ledger = ledger
        self.settler = settler
        self.submit = submit
        self.gate = gate
        self.reader_alive = reader_alive
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self.claims = Claims(redis, settings.group, settings.consumer, stats)
        self.wait_bound = wait_bound(settings)
        self._cursor: dict[str, str] = {}
        self._stuck: set[tuple[str, str]] = set()
        """Held entries that outlasted a bounded wait: later waits do not wait for them."""
        self._stopping = False
        self._answered_since: float | None = time.monotonic()
        """Since when Redis has answered this loop without a break (None: it did not)."""

    def stop(self) -> None:
        """Finish the group in hand, if any, and take no more."""
        self._stopping = True

    async def run(self) -> None:
        """Scan every `claim_interval`; at once again while scans come back full."""
        while not self._stopping:
            more = False
            try:
                more = await self._turn("claim", self._take_over)
            finally:
                if not more:
                    self.gate.open()
            if not more:
                await asyncio.sleep(self.settings.claim_interval)

    async def recover(self) -> None:
        """Run what an earlier process with this consumer name left pending.

        Call it before the read loop starts (and after the heartbeat has): everything pending
        on this name then belongs to the earlier process. Once reading has begun, a fresh entry
        could show up in the pending list before the read loop has recorded it, and be
        mistaken for a leftover.
        """
        try:
            await self._turn("recover", self._recover_own)
        finally:
            self.gate.open()

    async def _turn(self, operation: str, step: Callable[[], Awaitable[bool]]) -> bool:
        found = False

        async def once() -> None:
            nonlocal found
            found = await step()

        if not await tolerate(operation, self.stats, once):
            self._answered_since = None  # an outage: see `_owners_could_beat`
        return found

    async def _recover_own(self) -> bool:
        for stream in self.streams:
            start = "-"
            while not self._stopping:
                rows = await self.redis.xpending_range(
                    stream,
                    self.group,
                    min=start,
                    max="+",
                    count=self.settings.claim_batch,
                    consumername=self.consumer,
                )
                await self._handle(stream, rows, leftovers=True)
                if len(rows) < self.settings.claim_batch:
                    break
                start = "(" + text(rows[-1]["message_id"])
        return False

    async def _take_over(self) -> bool:
        """One page of abandoned entries per stream; True if a page came back full."""
        more = False
        for stream in self.streams:
            rows = await self.redis.xpending_range(
                stream,
                self.group,
                min=self._cursor.get(stream, "-"),
                max="+",
                count=self.settings.claim_batch,
                idle=int(self.settings.claim_idle * 1000),
            )
            full = len(rows) == self.settings.claim_batch
            self._cursor[stream] = "(" + text(rows[-1]["message_id"]) if full else "-"
            more = more or full
            await self._handle(stream, rows, leftovers=False)
        return more and not self._stopping

    def _is_ours(self, stream: str, message_id: str) -> bool:
        """Held or waiting in this process (rather than left behind by an earlier one)."""
        return self.ledger.is_held(stream, message_id) or self.ledger.is_waiting(stream, message_id)

    async def _handle(self, stream: str, rows: list[dict[str, Any]], *, leftovers: bool) -> None:
        """Run the handed-back entries of `rows` as ordinary work, and the due suspects."""
        seen = [
            Suspect(
                stream,
                text(r["message_id"]),
                text(r["consumer"]),
                int(r["times_delivered"]),
                int(r["time_since_delivered"]),
            )
            for r in rows
        ]
        seen = [s for s in seen if not (s.owner == self.consumer and self._is_ours(stream, s.id))]
        marks = await self.claims.marks(stream, [s.id for s in seen])
        now_ms = time.time() * 1000
        handed_back: list[Suspect] = []
        suspects: list[Suspect] = []
        for s in seen:
            mark = marks.get(s.id)
            if mark is not None:
                if mark_due_ms(mark) <= now_ms:
                    handed_back.append(s)
            elif leftovers or s.idle_ms >= self.policy.takeover_due_ms(s.deliveries, s.id):
                suspects.append(s)
        if suspects and not leftovers and not self._owners_could_beat():
            suspects = []  # their owners may be alive: give their heartbeats a chance first
        await self._run_handed_back(stream, handed_back)
        await self._run_suspects(stream, suspects)

    def _owners_could_beat(self) -> bool:
        """Whether live owners have had a heartbeat interval of Redis answering.

        While Redis is away no heartbeat refreshes anything, so once it is back every entry
        held through the outage looks abandoned, though its owner may be running it. Entries
        only count as abandoned once Redis has answered for a whole heartbeat interval (the
        owners retry their beat within a fraction of a second of its return).
        """
        now = time.monotonic()
        if self._answered_since is None:
            self._answered_since = now
        return now - self._answered_since >= self.settings.heartbeat_interval

    async def _run_handed_back(self, stream: str, entries: list[Suspect]) -> None:
        """Claim as many as there is room for; the rest wait for the next scan."""
        entries = entries[: max(self.ledger.room(), 0)]
        if not entries:
            return
        guards = [Guard(s.id, s.owner, s.idle_ms, handed_back=True) for s in entries]
        owners = {s.id: s.owner for s in entries}
        for got in await self.claims.claim(stream, guards):
            msg = await self._hold(stream, got, owners[got.id], handed_back=True)
            if msg is not None:
                self._start(msg)

    async def _run_suspects(self, stream: str, suspects: list[Suspect]) -> None:
        spent = [s for s in suspects if self.policy.over(s.deliveries + 1)]
        if spent:
            await self._claim_group(stream, spent)  # dead-lettered unrun: nothing to isolate
        groups = self._groups([s for s in suspects if not self.policy.over(s.deliveries + 1)])
        if not groups:
            return
        self.gate.close()
        if self.reader_alive():
            await self._bounded(self.gate.parked.wait(), "reader to park")
        await self._drained()  # on timeout the suspects run beside the stuck entries
        for group in groups:
            if self._stopping:
                return
            await self._claim_group(stream, group)
            if not await self._drained():
                self.gate.open()  # a suspect hangs: read again; the rest wait for a later scan
                return

    def _groups(self, suspects: list[Suspect]) -> list[list[Suspect]]:
        """Suspects of the same delivery count, in groups of the size the policy says."""
        by_count: dict[int, list[Suspect]] = {}
        for s in suspects:
            by_count.setdefault(s.deliveries, []).append(s)
        groups: list[list[Suspect]] = []
        for deliveries in sorted(by_count):
            same = by_count[deliveries]
            size = self.policy.suspect_group(deliveries + 1, self.settings.claim_batch)
            groups += [same[n : n + size] for n in range(0, len(same), size)]
        return groups

    async def _claim_group(self, stream: str, group: list[Suspect]) -> None:
        owners = {s.id: s.owner for s in group}
        claimed = await self.claims.claim(stream, [s.guard() for s in group])
        for got in claimed:
            msg = await self._hold(stream, got, owners[got.id], handed_back=False)
            if msg is not None:
                self._start(msg)

    def _start(self, msg: Message) -> None:
        """Run a claimed entry, or dead-letter it unrun if its attempts are spent."""
        if self.policy.over(msg.attempt):
            self.settler.dead_letter(
                msg,
                PoisonMessage(
                    f"delivered {msg.attempt - 1} times without finishing; the consumers "
                    "processing it stopped (crash or kill?)"
                ),
                "",
                reason="attempts exhausted",
            )
        else:
            self.submit(msg)

    async def _hold(
        self, stream: str, got: Claimed, owner: str, *, handed_back: bool
    ) -> Message | None:
        if got.fields is None:
            await self.claims.forget_deleted(stream, got.id, owner)
            return None
        msg = Message(stream, got.id, got.fields, got.deliveries, self.group)
        self.stats.reclaimed[stream] += 1
        log.info(
            "message.reclaimed",
            stream=stream,
            message_id=msg.id,
            from_consumer=owner,
            attempt=msg.attempt,
            handed_back=handed_back,
        )
        self.ledger.hold(msg)
        return msg

    async def _drained(self) -> bool:
        """Wait (bounded) until nothing is held but entries stuck in an earlier wait."""
        self._stuck = {k for k in self._stuck if self.ledger.is_held(*k)}
        if not self._stuck:
            waited = self.ledger.wait_empty()
        else:
            waited = self._held_at_most(len(self._stuck))
        if await self._bounded(waited, "work in flight"):
            return True
        self._stuck = {(s, i) for s, ids in self.ledger.held_ids() for i in ids}
        return False

    async def _held_at_most(self, count: int) -> None:
        while self.ledger.held_count() > count:
            await asyncio.sleep(0.01)

    async def _bounded(self, waited: Awaitable[Any], what: str) -> bool:
        """Await `waited` for up to `wait_bound` seconds; log and count a timeout."""
        try:
            async with asyncio.timeout(self.wait_bound):
                await waited
            return True
        except TimeoutError:
            self.stats.takeover_drain_timeouts += 1
            log.warning(
                "takeover.drain_timeout",
                waited_for=what,
                waited_s=self.wait_bound,
                held=self.ledger.held_count(),
                note="a handler call does not return; suspects run beside it, reading resumes",
            )
            return False
