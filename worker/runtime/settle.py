"""Settler: the outcome of each delivery reaches Redis here, batched, and never lost.

Handlers finish in any order; their outcomes are queued and flushed in one pipeline per
round trip: XACK per stream for successes, a Lua script per dead letter (ownership check,
XADD, XACK), and an idle-time reset for failures so that their backoff counts from the
failure. A flush that fails on a connection error, or that Redis refuses for now (OOM,
READONLY, ...), is put back and tried again with backoff: an entry whose ack was lost is at
worst processed again, never lost, and a full Redis is an outage, never a poison message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker import topology
from worker.connection import REDIS_DOWN, Reconnect, RedisRefused, refused_for_now
from worker.message import Message
from worker.runtime.dead_letter import (
    DEAD_LETTER,
    NOT_OWNED,
    SETTLE_WIDE,
    TOO_WIDE,
    DeadLetter,
    describe,
    script_args,
    traceback_of,
    write_wide,
)
from worker.runtime.heartbeat import TOUCH_OWNED
from worker.runtime.ledger import Ledger
from worker.runtime.outage import OUTAGE_CAP_S, REWIND_OWNED
from worker.runtime.outcomes import Outcomes
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
        self._queued = Outcomes()
        self._last_failure: dict[tuple[str, str], DeadLetter] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._dead_letter = redis.register_script(DEAD_LETTER)
        self._settle_wide = redis.register_script(SETTLE_WIDE)
        self._touch = redis.register_script(TOUCH_OWNED)
        self._rewind = redis.register_script(REWIND_OWNED)
        cap = min(OUTAGE_CAP_S, max(policy.backoff.cap, 0.1))
        self._refusals = Reconnect("handler", stats, first=min(0.1, cap), cap=cap)

    # Outcomes, called by the dispatcher -------------------------------------------------

    def ack(self, msg: Message, handler: str, *, skipped: bool = False) -> None:
        """The handlers succeeded (or none wanted the entry): acknowledge it."""
        queued = self._queued
        queued.acks[msg.stream].append(msg)
        queued.ok[(msg.stream, handler, "skipped" if skipped else "ok")] += 1
        if self._last_failure:
            self._last_failure.pop((msg.stream, msg.id), None)
        if self._refusals.down:
            self._refusals.succeeded()
        self._wake.set()

    def failed(self, msg: Message, exc: BaseException, handler: str) -> None:
        """A handler raised: retry after backoff, or dead-letter once attempts are spent.

        Redis refusing the handler's writes for now (OOM, READONLY, ...) spends no attempt.
        """
        if refused_for_now(exc):
            self._wait_for_redis(msg, exc)
            return
        if self.policy.spent(msg.attempt):
            self.dead_letter(msg, exc, handler, reason="attempts exhausted")
            return
        error_type, error = describe(exc)
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
            exc_info=exc,
        )
        self.stats.messages[(msg.stream, handler, "retry")] += 1
        self._remember(DeadLetter(msg, error_type, error, handler, traceback_of(exc)))
        self.ledger.wait_for_retry(msg, delay)
        self._queued.touches[msg.stream].append(msg.id)
        self._wake.set()

    def dead_letter(
        self, msg: Message, exc: BaseException, handler: str, *, reason: str = "rejected"
    ) -> None:
        """Move the entry to its dead-letter stream, then acknowledge it.

        `handler` is empty when the runtime gives up on an entry without running it again
        (its attempts were spent); the dead letter then carries the last failure seen here,
        if any, rather than only that the attempts ran out.
        """
        last = self._last_failure.pop((msg.stream, msg.id), None)
        if not handler and last is not None:
            letter = DeadLetter(msg, last.error_type, last.error, last.handler, last.traceback)
        else:
            error_type, error = describe(exc)
            letter = DeadLetter(msg, error_type, error, handler, traceback_of(exc))
        log.warning(
            "message.dead_lettered",
            stream=msg.stream,
            message_id=msg.id,
            handler=letter.handler,
            attempt=msg.attempt,
            reason=reason,
            error_type=letter.error_type,
            error=letter.error,
            dead_letter_stream=self.settings.dead_letter_stream(msg.stream),
            exc_info=exc,
        )
        self._queued.dead.append(letter)
        self._wake.set()

    def _remember(self, letter: DeadLetter) -> None:
        """Keep an entry's last failure until it is acked or dead-lettered (bounded)."""
        failures = self._last_failure
        failures[(letter.msg.stream, letter.msg.id)] = letter
        if len(failures) > self.ledger.capacity:
            del failures[next(iter(failures))]  # the oldest; its dead letter says less

    def _wait_for_redis(self, msg: Message, exc: BaseException) -> None:
        """Redis refused the handler's writes: run the entry again later, same attempt."""
        delay = self._refusals.failed(exc)  # logs redis.unavailable once per outage
        log.debug("message.waiting_for_redis", stream=msg.stream, message_id=msg.id, error=str(exc))
        rewound = Message(msg.stream, msg.id, msg.raw, msg.attempt - 1, msg.group)
        self.ledger.wait_for_retry(rewound, delay)
        self._queued.rewinds[msg.stream] += (msg.id, rewound.attempt)
        self._wake.set()

    # Flushing ---------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self._queued)

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
            except (*REDIS_DOWN, RedisRefused) as exc:
                self._wake.set()
                await reconnect.pause(exc)

    async def drain(self, timeout: float) -> bool:
        """Flush everything queued, retrying for up to `timeout` seconds; True if all done."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while self.pending():
            try:
                await asyncio.wait_for(self.flush(), max(deadline - time.monotonic(), 0.01))
            except (TimeoutError, RedisRefused, *REDIS_DOWN):
                if time.monotonic() + delay >= deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return True

    async def flush(self) -> None:
        """Send every queued outcome in one pipeline; requeue them all if it fails.

        Raises:
            RedisRefused: Redis refused some outcomes for now; they are queued again.
        """
        batch, self._queued = self._queued, Outcomes()
        if not batch:
            return
        try:
            results = await self._send(batch)
        except BaseException:
            batch.put_back(self._queued)
            raise
        await self._write_wide(batch.dead, results)
        refused = self._record(batch, results)
        if refused is not None:
            raise RedisRefused(refused)

    async def _send(self, batch: Outcomes) -> list[Any]:
        acks = batch.acks
        if not batch.dead and not batch.touches and not batch.rewinds and len(acks) == 1:
            # The common case: successes on one stream. A lone XACK skips the pipeline
            # machinery, which costs more than the command when flushes come thick and fast.
            ((stream, messages),) = acks.items()
            try:
                return [await self.redis.xack(stream, self.group, *[m.id for m in messages])]
            except ResponseError as exc:
                return [exc]  # reported per command, as the pipeline does
        pipe = topology.batch(self.redis, (self._dead_letter, self._touch, self._rewind))
        for letter in batch.dead:
            msg = letter.msg
            await self._dead_letter(
                keys=[self.settings.dead_letter_stream(msg.stream), msg.stream],
                args=script_args(letter, self.group, self.consumer),
                client=pipe,
            )
        for stream, messages in acks.items():
            pipe.xack(stream, self.group, *[m.id for m in messages])
        idle_ms = 0
        for stream, ids in batch.touches.items():
            await self._touch(
                keys=[stream], args=[self.group, self.consumer, idle_ms, *ids], client=pipe
            )
        for stream, pairs in batch.rewinds.items():
            await self._rewind(keys=[stream], args=[self.group, self.consumer, *pairs], client=pipe)
        return list(await pipe.execute(raise_on_error=False))

    async def _write_wide(self, dead: list[DeadLetter], results: list[Any]) -> None:
        """Write the dead letters the script found too wide for Lua, in place of its reply."""
        for position, letter in enumerate(dead):
            result = results[position]
            if isinstance(result, list) and result and result[0] == TOO_WIDE:
                dlq = self.settings.dead_letter_stream(letter.msg.stream)
                try:
                    results[position] = await write_wide(
                        self.redis, self._settle_wide, dlq, letter, self.group, self.consumer
                    )
                except (ResponseError, *REDIS_DOWN) as exc:
                    results[position] = exc

    def _record(self, batch: Outcomes, results: list[Any]) -> BaseException | None:
        """Account for each reply; returns what Redis refused for now, if anything (those
        outcomes are queued again)."""
        refused: BaseException | None = None
        for letter, result in zip(batch.dead, results, strict=False):
            if isinstance(result, Exception) and _for_now(result):
                self._queued.dead.append(letter)
                refused = result
            else:
                self._dead_letter_done(letter, result)
        position = len(batch.dead)
        now_ms = time.time() * 1000.0
        for stream, messages in batch.acks.items():
            result = results[position]
            position += 1
            if isinstance(result, Exception) and _for_now(result):
                self._queued.acks[stream].extend(messages)
                refused = result
                continue
            if isinstance(result, Exception):
                # Not a connection problem (those raise and are retried) but a refusal, such
                # as NOGROUP after the group was lost. The entries stay pending, if anywhere,
                # and are taken over after claim_idle like any abandoned entry.
                log.warning("ack.failed", stream=stream, count=len(messages), error=str(result))
                self.stats.redis_errors["ack"] += 1
            self.stats.end_to_end_seconds[stream].observe_runs(entry_ages(now_ms, messages))
            self.ledger.drop_many(stream, messages)
        for key, n in batch.ok.items():
            self.stats.messages[key] += n
        touched_at = time.monotonic()
        for stream, ids in batch.touches.items():
            if isinstance(results[position], Exception):
                # Without the reset the backoff counts from the delivery instead: still safe.
                self.stats.redis_errors["touch"] += 1
            position += 1
            self.ledger.touched(stream, ids, touched_at)
        for stream, pairs in batch.rewinds.items():
            if isinstance(results[position], Exception):
                # The entry keeps the attempt its claim counted: one spent, none lost.
                self.stats.redis_errors["rewind"] += 1
            position += 1
            self.ledger.touched(stream, [str(i) for i in pairs[::2]], touched_at)
        return refused

    def _dead_letter_done(self, letter: DeadLetter, result: Any) -> None:
        msg = letter.msg
        if isinstance(result, Exception):
            self._dead_letter_failed(letter, result)
        elif result[0] == NOT_OWNED:
            self._not_owned(letter)
        else:
            self.stats.messages[(msg.stream, letter.handler, "dead_letter")] += 1
            self.ledger.drop(msg)

    def _not_owned(self, letter: DeadLetter) -> None:
        """The entry is no longer pending on this consumer: acked already (a resend after a
        lost reply), or taken over by a peer, which settles it. Nothing was written."""
        msg = letter.msg
        self.stats.dead_letter_not_owned[msg.stream] += 1
        log.warning(
            "dead_letter.not_owned",
            stream=msg.stream,
            message_id=msg.id,
            handler=letter.handler,
            attempt=msg.attempt,
            note="not pending on this consumer any more: acked already, or taken over",
        )
        self.ledger.drop(msg)

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
            error_type=type(error).__name__,
            error=str(error),
            note="the entry stays pending and is tried again",
        )
        if isinstance(error, ResponseError) and "NOGROUP" in str(error):
            self.ledger.drop(msg)  # the group is gone, and with it this entry's pending state
            return
        # Stays pending on this consumer; its next claim finds the attempts spent and
        # dead-letters it again without running the handler, with this failure's reason.
        self._remember(letter)
        self.ledger.wait_for_retry(msg, self.policy.delay(msg.attempt, msg.id))
        self.ledger.touched(msg.stream, [msg.id], time.monotonic())


def _for_now(error: Exception) -> bool:
    """A failure the same command survives later: the connection, or a refusal for now."""
    return isinstance(error, REDIS_DOWN) or refused_for_now(error)
