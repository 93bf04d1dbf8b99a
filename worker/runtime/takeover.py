"""Takeover: entries abandoned by consumers that stopped, and this name's own leftovers.

Entries idle for `claim_idle` on another consumer (or on an earlier process with this
consumer's name) belonged to a process that stopped. They are *suspects*: one of them may be
the message that killed it. Suspects run one at a time with nothing else in flight, so that
if one kills this process too, only its own delivery count grows; once that count passes
`max_attempts` it is dead-lettered without running again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from worker.connection import text, tolerate
from worker.message import Message
from worker.runtime.claims import entries_by_id
from worker.runtime.ledger import Ledger, ReadGate
from worker.runtime.policy import RetryPolicy
from worker.runtime.retries import PoisonMessage
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runtime.takeover")


@dataclass(slots=True)
class Suspect:
    """A pending entry that no live consumer refreshes, as one scan saw it."""

    stream: str
    id: str
    owner: str
    deliveries: int
    min_idle_ms: int


class Takeover:
    """Scans for abandoned entries every `claim_interval` and runs them as suspects."""

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
        self._cursor: dict[str, str] = {}
        self._stopping = False

    def stop(self) -> None:
        """Finish the suspect in hand, if any, and take no more."""
        self._stopping = True

    async def run(self) -> None:
        """Scan for abandoned entries every `claim_interval`."""
        while not self._stopping:
            await asyncio.sleep(self.settings.claim_interval)
            await tolerate("claim", self.stats, self._take_over)

    async def recover(self) -> None:
        """Run what an earlier process with this consumer name left pending.

        Call it before the read loop starts: everything pending on this name then belongs to
        the earlier process. Once reading has begun, a fresh entry could show up in the
        pending list before the read loop has recorded it, and be mistaken for a leftover.
        """
        await tolerate("recover", self.stats, self._recover_own)

    async def _recover_own(self) -> None:
        """Entries pending on this consumer name from an earlier process are suspects now."""
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
                suspects = [
                    Suspect(
                        stream, text(r["message_id"]), self.consumer, int(r["times_delivered"]), 0
                    )
                    for r in rows
                    if not self._is_ours(stream, text(r["message_id"]))
                ]
                await self._run_alone(suspects)
                if len(rows) < self.settings.claim_batch:
                    break
                start = "(" + text(rows[-1]["message_id"])

    async def _take_over(self) -> None:
        claim_idle_ms = int(self.settings.claim_idle * 1000)
        for stream in self.streams:
            start = self._cursor.get(stream, "-")
            rows = await self.redis.xpending_range(
                stream,
                self.group,
                min=start,
                max="+",
                count=self.settings.claim_batch,
                idle=claim_idle_ms,
            )
            self._cursor[stream] = (
                "(" + text(rows[-1]["message_id"])
                if len(rows) == self.settings.claim_batch
                else "-"
            )
            suspects = [s for row in rows if (s := self._suspect(stream, row))]
            await self._run_alone(suspects)

    def _is_ours(self, stream: str, message_id: str) -> bool:
        """Held or waiting in this process (rather than left behind by an earlier one)."""
        return self.ledger.is_held(stream, message_id) or self.ledger.is_waiting(stream, message_id)

    def _suspect(self, stream: str, row: dict[str, Any]) -> Suspect | None:
        message_id = text(row["message_id"])
        owner = text(row["consumer"])
        if owner == self.consumer and self._is_ours(stream, message_id):
            return None
        deliveries = int(row["times_delivered"])
        due_ms = self.policy.takeover_due_ms(deliveries, message_id)
        if int(row["time_since_delivered"]) < due_ms:
            return None
        return Suspect(stream, message_id, owner, deliveries, due_ms)

    async def _run_alone(self, suspects: list[Suspect]) -> None:
        if not suspects:
            return
        self.gate.close()
        try:
            if self.reader_alive():
                await self.gate.parked.wait()
            await self.ledger.wait_empty()
            for suspect in suspects:
                if self._stopping:
                    return
                await self._claim_and_run(suspect)
                await self.ledger.wait_empty()
        finally:
            self.gate.open()

    async def _claim_and_run(self, suspect: Suspect) -> None:
        claimed = await self.redis.xclaim(
            suspect.stream, self.group, self.consumer, suspect.min_idle_ms, [suspect.id]
        )
        fields = entries_by_id(claimed).get(suspect.id)
        if fields is None:
            if not await self.redis.xrange(suspect.stream, suspect.id, suspect.id):
                # Deleted or trimmed while pending. Redis 7 drops it from the pending list on
                # XCLAIM; the XACK covers older servers. Either way it is never looped over.
                await self.redis.xack(suspect.stream, self.group, suspect.id)
                self.stats.deleted_pending[suspect.stream] += 1
                log.warning(
                    "pending.deleted",
                    stream=suspect.stream,
                    message_id=suspect.id,
                    owner=suspect.owner,
                )
            return  # otherwise another consumer claimed it first
        msg = Message(suspect.stream, suspect.id, fields, suspect.deliveries + 1, self.group)
        self.stats.reclaimed[suspect.stream] += 1
        log.info(
            "message.reclaimed",
            stream=msg.stream,
            message_id=msg.id,
            from_consumer=suspect.owner,
            attempt=msg.attempt,
        )
        self.ledger.hold(msg)
        if self.policy.over(msg.attempt):
            self.settler.dead_letter(
                msg,
                PoisonMessage(
                    f"delivered {suspect.deliveries} times without finishing; the consumers "
                    "processing it stopped (crash or kill?)"
                ),
                "",
                reason="attempts exhausted",
            )
        else:
            self.submit(msg)
