"""Retries: failed entries wait on this consumer, then run again once their backoff is due.

A failed entry stays pending on the consumer that ran it; its delivery count is the attempt
number, so a crash loses no count. When its delay has passed it is claimed again (XCLAIM,
which bumps that count) and re-dispatched, or dead-lettered when its attempts are spent.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

from worker.connection import tolerate
from worker.errors import SyncWorkerError
from worker.message import Message
from worker.runtime.claims import Claims, Guard
from worker.runtime.ledger import Ledger, ReadGate, Waiting
from worker.runtime.policy import RetryPolicy
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runtime.retries")


class PoisonMessage(SyncWorkerError):
    """An entry delivered more than `max_attempts` times without its handler finishing."""


class RetryScan:
    """Claims this consumer's due retries every `claim_interval` and runs them again."""

    def __init__(
        self,
        redis: Redis,
        settings: WorkerSettings,
        policy: RetryPolicy,
        ledger: Ledger,
        settler: Settler,
        submit: Callable[[Message], None],
        gate: ReadGate,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.policy = policy
        self.ledger = ledger
        self.settler = settler
        self.submit = submit
        self.gate = gate
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self.claims = Claims(redis, settings.group, settings.consumer, stats)
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.claim_interval)
            if self.gate.is_open:  # while takeover runs suspects alone, nothing else starts
                await tolerate("retry", self.stats, self.retry_due)

    async def retry_due(self) -> None:
        now = time.monotonic()
        due = self.ledger.due(now)
        if not due:
            return
        per_stream: defaultdict[str, list[Waiting]] = defaultdict(list)
        for entry in due:
            per_stream[entry.msg.stream].append(entry)
        for stream, entries in per_stream.items():
            # Each entry only if it is still pending on this consumer: one that a peer took
            # over meanwhile (after a stall of this process) stays with it.
            guards = [Guard(e.msg.id, self.consumer, 0) for e in entries]
            claimed = {c.id: c for c in await self.claims.claim(stream, guards)}
            for entry in entries:
                got = claimed.get(entry.msg.id)
                if got is None or got.fields is None:
                    self.ledger.forget_waiting(entry)
                    if got is not None:
                        await self.claims.forget_deleted(stream, entry.msg.id, self.consumer)
                        continue
                    log.info(
                        "retry.lost",
                        stream=stream,
                        message_id=entry.msg.id,
                        attempt=entry.msg.attempt,
                        note="taken over by another consumer",
                    )
                    continue
                msg = Message(stream, entry.msg.id, got.fields, got.deliveries, self.group)
                entry.msg = msg
                self.ledger.resume(entry)
                if self.policy.over(msg.attempt):
                    self.settler.dead_letter(
                        msg, PoisonMessage("attempts exhausted"), "", reason="attempts exhausted"
                    )
                else:
                    self.submit(msg)
