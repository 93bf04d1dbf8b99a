"""Settler: the outcome of each delivery reaches Redis here, batched, and never lost.

Handlers finish in any order; their outcomes are queued and flushed in one pipeline per
round trip: XACK per stream for successes, a Lua script per dead letter (XADD then XACK),
and an idle-time reset for failures so that their backoff counts from the failure. A flush
that fails on a connection error is put back and tried again with backoff: an entry whose
ack was lost is at worst processed again, never lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.connection import REDIS_DOWN, Reconnect
from worker.message import Message
from worker.runtime.dead_letter import DEAD_LETTER, DeadLetter, dead_letter_fields, describe
from worker.runtime.heartbeat import TOUCH_OWNED
from worker.runtime.ledger import Ledger
from worker.runtime.policy import RetryPolicy
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runtime.settle")


def entry_ages(now_ms: float, messages: list[Message]) -> list[tuple[float, int]]:
    """Seconds since each entry was added, as (age, entries in a row of that age) runs.

    An entry id starts with the millisecond Redis added it, and a flush holds long runs of
    entries from the same millisecond, so the age is worked out once per run, not per entry.
    """
    runs: list[tuple[float, int]] = []
    previous = ""
    age = 0.0
    times = 0
    for msg in messages:
        added = msg.id.partition("-")[0]
        if added != previous:
            if times:
                runs.append((age, times))
            previous, times = added, 0
            age = max(now_ms - int(added), 0.0) / 1000.0
        times += 1
    if times:
        runs.append((age, times))
    return runs


class Settler:
    """Queues outcomes and flushes them to Redis in batches."""

    def __init__(
        self,
        redis: Redis,
        settings: WorkerSettings,
        policy: RetryPolicy,
        ledger: Ledger,
        stats: Stats,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.policy = policy
        self.ledger = ledger
        self.stats = stats
        self.group = settings.group
        self.consumer = settings.consumer
        self._acks: defaultdict[str, list[Message]] = defaultdict(list)
        self._ok: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._touches: defaultdict[str, list[str]] = defaultdict(list)
        self._dead: list[DeadLetter] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._dead_letter = redis.register_script(DEAD_LETTER)
        self._touch = redis.register_script(TOUCH_OWNED)

    # Outcomes, called by the dispatcher -------------------------------------------------

    def ack(self, msg: Message, handler: str, *, skipped: bool = False) -> None:
        """The handlers succeeded (or none wanted the entry): acknowledge it."""
        self._acks[msg.stream].append(msg)
        self._ok[(msg.stream, handler, "skipped" if skipped else "ok")] += 1
        self._wake.set()

    def failed(self, msg: Message, exc: BaseException, handler: str) -> None:
        """A handler raised: retry after backoff, or dead-letter once attempts are spent."""
        error_type, error = describe(exc)
        if self.policy.spent(msg.attempt):
            self.dead_letter(msg, exc, handler, reason="attempts exhausted")
            return
        delay = self.policy.delay(msg.attempt, msg.id, exc)
        log.warning(
            "message.retry",
            stream=msg.stream,
            message_id=msg.id,
            handler=handler,
            attempt=msg.attempt,
            max_attempts=self.policy.max_attempts,
            retry_in_s=round(delay, 3),
            error_type=error_type,
            error=error,
        )
        self.stats.messages[(msg.stream, handler, "retry")] += 1
        self.ledger.wait_for_retry(msg, delay)
        self._touches[msg.stream].append(msg.id)
        self._wake.set()

    def dead_letter(
        self, msg: Message, exc: BaseException, handler: str, *, reason: str = "rejected"
    ) -> None:
        """Move the entry to its dead-letter stream, then acknowledge it."""
        error_type, error = describe(exc)
        log.warning(
            "message.dead_lettered",
            stream=msg.stream,
            message_id=msg.id,
            handler=handler,
            attempt=msg.attempt,
            reason=reason,
            error_type=error_type,
            error=error,
            dead_letter_stream=self.settings.dead_letter_stream(msg.stream),
        )
        self._dead.append(DeadLetter(msg, error_type, error, handler))
        self._wake.set()

    # Flushing ---------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self._acks or self._dead or self._touches)

    def close(self) -> None:
        """Make `run` return after the flush in progress; `drain` sends the rest."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """Flush whenever outcomes are queued; on Redis errors, back off and try again.

        Shutdown goes through `close()` rather than task cancellation, so that a flush is
        never abandoned half-way through a pipeline.
        """
        reconnect = Reconnect("ack", self.stats, first=0.05)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.flush()
                reconnect.succeeded()
            except REDIS_DOWN as exc:
                self._wake.set()
                await reconnect.pause(exc)

    async def drain(self, timeout: float) -> bool:
        """Flush everything queued, retrying for up to `timeout` seconds; True if all done."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while self.pending():
            try:
                await asyncio.wait_for(self.flush(), max(deadline - time.monotonic(), 0.01))
            except (TimeoutError, *REDIS_DOWN):
                if time.monotonic() + delay >= deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return True

    async def flush(self) -> None:
        """Send every queued outcome in one pipeline; requeue them all if it fails."""
        acks, self._acks = self._acks, defaultdict(list)
        ok, self._ok = self._ok, defaultdict(int)
        touches, self._touches = self._touches, defaultdict(list)
        dead, self._dead = self._dead, []
        if not (acks or touches or dead):
            return
        try:
            results = await self._send(acks, touches, dead)
        except BaseException:
            self._requeue(acks, ok, touches, dead)
            raise
        self._record(acks, ok, touches, dead, results)

    async def _send(
        self,
        acks: dict[str, list[Message]],
        touches: dict[str, list[str]],
        dead: list[DeadLetter],
    ) -> list[Any]:
        if not dead and not touches and len(acks) == 1:
            # The common case: successes on one stream. A lone XACK skips the pipeline
            # machinery, which costs more than the command when flushes come thick and fast.
            ((stream, messages),) = acks.items()
            try:
                return [await self.redis.xack(stream, self.group, *[m.id for m in messages])]
            except ResponseError as exc:
                return [exc]  # reported per command, as the pipeline does
        pipe = self.redis.pipeline(transaction=False)
        for letter in dead:
            msg = letter.msg
            await self._dead_letter(
                keys=[self.settings.dead_letter_stream(msg.stream), msg.stream],
                args=[self.group, msg.id, *dead_letter_fields(letter, self.group, self.consumer)],
                client=pipe,
            )
        for stream, messages in acks.items():
            pipe.xack(stream, self.group, *[m.id for m in messages])
        idle_ms = 0
        for stream, ids in touches.items():
            await self._touch(
                keys=[stream], args=[self.group, self.consumer, idle_ms, *ids], client=pipe
            )
        return list(await pipe.execute(raise_on_error=False))

    def _requeue(
        self,
        acks: dict[str, list[Message]],
        ok: dict[tuple[str, str, str], int],
        touches: dict[str, list[str]],
        dead: list[DeadLetter],
    ) -> None:
        for stream, messages in acks.items():
            self._acks[stream][:0] = messages
        for key, n in ok.items():
            self._ok[key] += n
        for stream, ids in touches.items():
            self._touches[stream][:0] = ids
        self._dead[:0] = dead

    def _record(
        self,
        acks: dict[str, list[Message]],
        ok: dict[tuple[str, str, str], int],
        touches: dict[str, list[str]],
        dead: list[DeadLetter],
        results: list[Any],
    ) -> None:
        now_ms = time.time() * 1000.0
        position = 0
        for letter in dead:
            result = results[position]
            position += 1
            msg = letter.msg
            if isinstance(result, Exception):
                self._dead_letter_failed(letter, result)
                continue
            self.stats.messages[(msg.stream, letter.handler, "dead_letter")] += 1
            self.ledger.drop(msg)
        for stream, messages in acks.items():
            result = results[position]
            position += 1
            if isinstance(result, Exception):
                # Not a connection problem (those raise and are retried) but a refusal, such
                # as NOGROUP after the group was lost. The entries stay pending, if anywhere,
                # and are taken over after claim_idle like any abandoned entry.
                log.warning("ack.failed", stream=stream, count=len(messages), error=str(result))
                self.stats.redis_errors["ack"] += 1
            self.stats.end_to_end_seconds[stream].observe_runs(entry_ages(now_ms, messages))
            self.ledger.drop_many(stream, messages)
        for key, n in ok.items():
            self.stats.messages[key] += n
        touched_at = time.monotonic()
        for stream, ids in touches.items():
            if isinstance(results[position], Exception):
                # Without the reset the backoff counts from the delivery instead: still safe.
                self.stats.redis_errors["touch"] += 1
            position += 1
            self.ledger.touched(stream, ids, touched_at)

    def _dead_letter_failed(self, letter: DeadLetter, error: Exception) -> None:
        msg = letter.msg
        self.stats.redis_errors["dead_letter"] += 1
        log.error(
            "dead_letter.failed",
            stream=msg.stream,
            message_id=msg.id,
            handler=letter.handler,
            attempt=msg.attempt,
            dead_letter_stream=self.settings.dead_letter_stream(msg.stream),
            error=str(error),
            note="the entry stays pending and is tried again",
        )
        if isinstance(error, ResponseError) and "NOGROUP" in str(error):
            self.ledger.drop(msg)  # the group is gone, and with it this entry's pending state
            return
        # Stays pending on this consumer; its next claim finds the attempts spent and
        # dead-letters it again without running the handler.
        self.ledger.wait_for_retry(msg, self.policy.delay(msg.attempt, msg.id))
        self.ledger.touched(msg.stream, [msg.id], time.monotonic())
