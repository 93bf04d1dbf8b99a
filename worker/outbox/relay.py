"""The relay: one leader publishes the outbox in order; standbys wait for its lock.

Order. Rows are published oldest first (by id, one whole transaction at a time) and deleted
once Redis accepted them; the relay keeps no cursor. A bigserial id is taken at INSERT, not
at commit, so a transaction can commit a row with a smaller id than rows already published.
With a cursor ("publish ids above the last one") that row would be skipped for ever; here
it is simply among the oldest rows left, and goes out in the next batch. Nothing is lost,
and no gap has to be waited for.

What that gives each key: when a key's transactions take the key's lock (SELECT ... FOR
UPDATE, or the UPDATE that bumps its version) before adding its events, the later one
inserts, and so numbers, its rows after the earlier one committed: their ids are in commit
order, and the earlier rows are visible to every batch that can see the later ones. So the
key's events reach the stream in commit order. Rows of one transaction become visible
together (they commit together); a batch takes whole transactions and publishes each one's
rows together, in id order (`worker.outbox.batch.select_sql`), so they are contiguous in
the stream even when concurrent transactions interleaved their ids.

Rejected alternative: publishing only rows of transactions below the snapshot's xmin
(`pg_snapshot_xmin(pg_current_snapshot())`, with an xid8 column defaulting to
`pg_current_xact_id()`). It yields a gapless id prefix, which nothing here needs, and it is
not the key's commit order either: xids are assigned at a transaction's first write, so of
two transactions serialised on one key the later one can hold the smaller xid and pass the
watermark first. It would also stall every event behind any long-running writing
transaction anywhere in the database.

Leadership. Every replica keeps one PostgreSQL session; the one that gets the session-level
advisory lock (`pg_try_advisory_lock`, keyed by the table) leads and relays on that very
session, so it cannot relay without holding the lock: if the session dies, both end
together. Standbys try the lock every `lock_interval` seconds. When a leader process dies,
its socket closes and PostgreSQL ends its session at once (or, if it was inside a long
statement, within `client_connection_check_interval`, set to 1 s on the leader's session),
so a standby takes over within about `lock_interval`. A leader cut off by the network is
only noticed by TCP keepalives (put keepalives_idle=... in the DSN); meanwhile the new leader
may publish rows the old one publishes too: duplicates with the same event_id, never loss.

Waking. The leader LISTENs on the table's channel (the INSERT trigger NOTIFYs at commit),
and polls every `poll_interval` seconds as a fallback in case a notification is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.connection import REDIS_DOWN
from worker.outbox.batch import PublishRefused, relay_once
from worker.outbox.schema import TABLE, channel, check_table, lock_key
from worker.outbox.stats import OutboxStats

if TYPE_CHECKING:
    from psycopg import AsyncConnection

log = structlog.get_logger("worker.outbox.relay")

APPLICATION_NAME = "syncworker-outbox"
"""The relay's sessions carry this name in pg_stat_activity."""

STATEMENT_TIMEOUT_S = 30
"""Seconds a statement of the leader may run before PostgreSQL cancels it."""

BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class RelayOptions:
    """How the relay runs.

    Args:
        dsn: libpq connection string or URL of the database holding the outbox.
        table: the outbox table.
        batch_size: rows per batch (one SELECT, one pipelined XADD round trip, one DELETE);
            batches hold whole transactions, so one may run past it by the rest of its last.
        poll_interval: seconds between polls when no notification arrives.
        lock_interval: seconds between a standby's attempts to take the leadership lock.
        stats_interval: seconds between refreshes of the pending-rows and lag gauges.
        connect_timeout: seconds a PostgreSQL connection attempt may take.
    """

    dsn: str
    table: str = TABLE
    batch_size: int = 500
    poll_interval: float = 1.0
    lock_interval: float = 1.0
    stats_interval: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        check_table(self.table)
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        for name in ("poll_interval", "lock_interval", "stats_interval", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


class Backoff:
    """Capped exponential back-off of one kind of failure."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST_S

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF_CAP_S)
        return delay

    def reset(self) -> None:
        self.delay = BACKOFF_FIRST_S


class Relay:
    """Relays committed outbox rows to their Redis streams; see the module docstring.

    Args:
        options: see `RelayOptions`.
        redis: an asyncio Redis client (bytes or str replies).
        stats: where counters go; a fresh `OutboxStats` when None.
    """

    def __init__(self, options: RelayOptions, redis: Redis, stats: OutboxStats | None = None):
        self.options = options
        self.redis = redis
        self.stats = stats or OutboxStats()
        self.stopping = asyncio.Event()
        self._db_backoff = Backoff()
        self._redis_backoff = Backoff()
        self._redis_failing = False
        self._gauges_at = float("-inf")

    def stop(self) -> None:
        """Ask `run` to return after the current step (a batch, or a wait)."""
        self.stopping.set()

    async def run(self) -> None:
        """Stand by or lead until `stop`; reconnect to PostgreSQL after any failure."""
        import psycopg

        while not self.stopping.is_set():
            self.stats.last_turn = time.monotonic()
            try:
                await self._session()
            except psycopg.Error as exc:
                self.stats.database_errors += 1
                delay = self._db_backoff.next()
                log.warning("outbox.database_failed", error=str(exc), retry_in_s=delay)
                await self._sleep(delay)
            finally:
                if self.stats.leader:
                    log.info("outbox.leadership_released")
                self.stats.leader = False

    async def _session(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            self.options.dsn,
            autocommit=True,
            connect_timeout=max(1, round(self.options.connect_timeout)),
            application_name=APPLICATION_NAME,
        )
        try:
            if not await self._stand_by(conn):
                return
            self._db_backoff.reset()
            await self._lead(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    async def _stand_by(self, conn: AsyncConnection[Any]) -> bool:
        """Try the lock every `lock_interval`; True once held, False when told to stop."""
        logged = False
        while not self.stopping.is_set():
            self.stats.last_turn = time.monotonic()
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (lock_key(self.options.table),)
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return True
            await self._refresh_gauges(conn)
            self._db_backoff.reset()
            if not logged:
                log.info("outbox.standby", table=self.options.table)
                logged = True
            await self._sleep(self.options.lock_interval)
        return False

    async def _lead(self, conn: AsyncConnection[Any]) -> None:
        table = self.options.table
        # A statement that hangs (a lock held for ever) ends in an error and a new session,
        # instead of a relay that looks alive and publishes nothing.
        await conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT_S}s'")
        with contextlib.suppress(Exception):  # PostgreSQL 14+; older ones go without
            await conn.execute("SET client_connection_check_interval = '1s'")
        await conn.execute(f"LISTEN {channel(table)}")
        self.stats.leader = True
        log.info("outbox.leading", table=table)
        while not self.stopping.is_set():
            self.stats.last_turn = time.monotonic()
            more = await self._turn(conn)
            await self._refresh_gauges(conn)
            # Rows left behind the batch, or a failure (already backed off): go again at once.
            if not more and not self._redis_failing:
                await self._wait_for_rows(conn)

    async def _turn(self, conn: AsyncConnection[Any]) -> bool:
        """One batch; whether to go again at once. Redis failures are counted, logged once per
        outage, and backed off."""
        try:
            turn = await relay_once(conn, self.redis, self.options.table, self.options.batch_size)
        except (*REDIS_DOWN, ResponseError) as exc:
            await self._redis_failed(exc)
            return False
        self.stats.published += turn.published
        if turn.refused is not None:
            await self._redis_failed(turn.refused)
            return False
        if self._redis_failing:
            log.info("outbox.publishing_again")
        self._redis_failing = False
        self._redis_backoff.reset()
        return turn.more

    async def _redis_failed(self, exc: BaseException) -> None:
        self.stats.publish_errors += 1
        delay = self._redis_backoff.next()
        if not self._redis_failing:
            cause = exc.cause if isinstance(exc, PublishRefused) else exc
            log.warning(
                "outbox.publish_failed",
                error_type=type(cause).__name__,
                error=str(exc),
                retry_in_s=delay,
            )
        self._redis_failing = True
        await self._sleep(delay)

    async def _wait_for_rows(self, conn: AsyncConnection[Any]) -> None:
        """Until a NOTIFY arrives (or arrived during the batch), `poll_interval`, or stop."""
        wait = asyncio.ensure_future(self._next_notify(conn))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not wait.done():
                wait.cancel()
                # Bounded: the session is closed on the way out anyway.
                await asyncio.wait({wait}, timeout=1.0)
        if wait.done() and not wait.cancelled() and wait.exception() is not None:
            raise wait.exception()  # type: ignore[misc]

    async def _next_notify(self, conn: AsyncConnection[Any]) -> None:
        async for _ in conn.notifies(timeout=self.options.poll_interval, stop_after=1):
            pass

    async def _refresh_gauges(self, conn: AsyncConnection[Any]) -> None:
        """Pending rows and lag, every `stats_interval` (a count over the table: cheap while
        the relay keeps up, which is when the table is small)."""
        now = time.monotonic()
        if now - self._gauges_at < self.options.stats_interval:
            return
        self._gauges_at = now
        cursor = await conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)"
            f" FROM {self.options.table}"
        )
        row = await cursor.fetchone()
        if row is not None:
            self.stats.pending_rows = int(row[0])
            self.stats.lag_seconds = max(0.0, float(row[1]))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
