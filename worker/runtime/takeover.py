"""Reclaimer: heartbeats, due retries, and entries abandoned by consumers that died.

Three jobs on one timer:
- Heartbeat: every `claim_idle / 3`, reset the idle time of every entry this process holds,
  so no live consumer's work is taken over, however long it waits or runs.
- Retries: a failed entry stays pending on this consumer; once its backoff is due it is
  claimed again (XCLAIM, which bumps the durable delivery count) and re-dispatched.
- Takeover: entries idle for `claim_idle` on another consumer (or on an earlier process with
  this consumer's name) belonged to a process that stopped. They are *suspects*: one of them
  may be the message that killed it. Suspects run one at a time with nothing else in flight,
  so that if one kills this process too, only its own delivery count grows; once that count
  passes `max_attempts` it is dead-lettered without running again.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.errors import SyncWorkerError
from worker.message import Message
from worker.runtime.backoff import Backoff
from worker.runtime.ledger import Ledger, Waiting
from worker.runtime.settle import REDIS_DOWN, Settler
from worker.runtime.stats import Stats
from worker.scripts import TOUCH_OWNED
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runtime.takeover")

TOUCH_CHUNK = 500
"""Ids per heartbeat script call, to keep each call short on the server."""


class PoisonMessage(SyncWorkerError):
    """An entry delivered more than `max_attempts` times without its handler finishing."""


@dataclass(slots=True)
class Suspect:
    stream: str
    id: str
    owner: str
    deliveries: int
    min_idle_ms: int


class ReadGate:
    """Lets the reclaimer stop the read loop while suspects run alone."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.parked = asyncio.Event()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        if self._open.is_set():
            return
        self.parked.set()
        try:
            await self._open.wait()
        finally:
            self.parked.clear()


class Reclaimer:
    """Runs heartbeats, due retries and takeovers on a timer."""

    def __init__(
        self,
        redis: Redis,
        settings: WorkerSettings,
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
        self.streams = streams
        self.ledger = ledger
        self.settler = settler
        self.submit = submit
        self.gate = gate
        self.reader_alive = reader_alive
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self.backoff = Backoff(settings.retry_base, settings.retry_max, settings.retry_jitter)
        self._touch = redis.register_script(TOUCH_OWNED)
        self._cursor: dict[str, str] = {}
        self._stopping = False

    def stop(self) -> None:
        """Finish the suspect in hand, if any, and take no more."""
        self._stopping = True

    async def run(self) -> None:
        """Due retries and takeovers, every `claim_interval`."""
        while not self._stopping:
            await asyncio.sleep(self.settings.claim_interval)
            await self._guard("retry", self._retry_due)
            await self._guard("claim", self._take_over)

    async def beat(self) -> None:
        """Heartbeats, on a task of their own: a suspect running alone in `run` may take
        longer than `claim_idle`, and must not lose its entry meanwhile."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._guard("heartbeat", self.heartbeat)

    async def _guard(self, operation: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except REDIS_DOWN as exc:
            self.stats.redis_errors[operation] += 1
            log.warning("redis.unavailable", operation=operation, error=str(exc))
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                self.stats.redis_errors[operation] += 1
                log.error("reclaim.failed", operation=operation, error=str(exc))
            # NOGROUP: the read loop recreates the group; nothing is pending in a new one.

    # Heartbeat --------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Reset the idle time of every held entry that is still pending on this consumer."""
        for stream, ids in self.ledger.held_ids():
            await self._set_idle(stream, ids, 0)

    async def release(self, messages: list[Message]) -> None:
        """Hand entries this process will not finish to the fleet: mark them idle for
        `claim_idle` so the next scan of any consumer takes them over."""
        per_stream: defaultdict[str, list[str]] = defaultdict(list)
        for msg in messages:
            per_stream[msg.stream].append(msg.id)
        idle_ms = int(self.settings.claim_idle * 1000)
        for stream, ids in per_stream.items():
            await self._set_idle(stream, ids, idle_ms)

    async def _set_idle(self, stream: str, ids: list[str], idle_ms: int) -> None:
        """Set the idle time of those of `ids` still pending on this consumer."""
        for start in range(0, len(ids), TOUCH_CHUNK):
            await self._touch(
                keys=[stream],
                args=[self.group, self.consumer, idle_ms, *ids[start : start + TOUCH_CHUNK]],
            )

    # Retries ----------------------------------------------------------------------------

    async def _retry_due(self) -> None:
        now = time.monotonic()
        due = self.ledger.due(now)
        if not due:
            return
        per_stream: defaultdict[str, list[Waiting]] = defaultdict(list)
        for entry in due:
            per_stream[entry.msg.stream].append(entry)
        for stream, entries in per_stream.items():
            # Only entries untouched since our reset qualify: one another consumer took over
            # in the meantime has a younger idle time, and stays with it.
            min_idle_ms = max(int((now - max(e.touched_at for e in entries)) * 1000) - 500, 0)
            claimed = await self.redis.xclaim(
                stream, self.group, self.consumer, min_idle_ms, [e.msg.id for e in entries]
            )
            fresh = _entries_by_id(claimed)
            for entry in entries:
                fields = fresh.get(entry.msg.id)
                if fields is None:
                    self.ledger.forget_waiting(entry)
                    log.info(
                        "retry.lost",
                        stream=stream,
                        message_id=entry.msg.id,
                        attempt=entry.msg.attempt,
                        note="deleted, or taken over by another consumer",
                    )
                    continue
                msg = Message(stream, entry.msg.id, fields, entry.msg.attempt + 1, self.group)
                entry.msg = msg
                self.ledger.resume(entry)
                if msg.attempt > self.settings.max_attempts:
                    self.settler.dead_letter(
                        msg, PoisonMessage("attempts exhausted"), "", reason="attempts exhausted"
                    )
                else:
                    self.submit(msg)

    # Takeover ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Run what an earlier process with this consumer name left pending.

        Call it before the read loop starts: everything pending on this name then belongs to
        the earlier process. Once reading has begun, a fresh entry could show up in the
        pending list before the read loop has recorded it, and be mistaken for a leftover.
        """
        await self._guard("recover", self._recover_own)

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
                        stream, _text(r["message_id"]), self.consumer, int(r["times_delivered"]), 0
                    )
                    for r in rows
                    if not self._is_ours(stream, _text(r["message_id"]))
                ]
                await self._run_alone(suspects)
                if len(rows) < self.settings.claim_batch:
                    break
                start = "(" + _text(rows[-1]["message_id"])

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
                "(" + _text(rows[-1]["message_id"])
                if len(rows) == self.settings.claim_batch
                else "-"
            )
            suspects = [s for row in rows if (s := self._suspect(stream, row, claim_idle_ms))]
            await self._run_alone(suspects)

    def _is_ours(self, stream: str, message_id: str) -> bool:
        """Held or waiting in this process (rather than left behind by an earlier one)."""
        return self.ledger.is_held(stream, message_id) or self.ledger.is_waiting(stream, message_id)

    def _suspect(self, stream: str, row: dict[str, Any], claim_idle_ms: int) -> Suspect | None:
        message_id = _text(row["message_id"])
        owner = _text(row["consumer"])
        if owner == self.consumer and self._is_ours(stream, message_id):
            return None
        deliveries = int(row["times_delivered"])
        due_ms = max(claim_idle_ms, int(self.backoff.delay(deliveries, message_id) * 1000))
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
        fields = _entries_by_id(claimed).get(suspect.id)
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
        if msg.attempt > self.settings.max_attempts:
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


def _entries_by_id(claimed: list[Any]) -> dict[str, dict[bytes, bytes]]:
    found: dict[str, dict[bytes, bytes]] = {}
    for item in claimed or ():
        if not item or item[0] is None or item[1] is None:
            continue
        found[_text(item[0])] = item[1]
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value
