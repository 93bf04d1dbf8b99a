"""What the demo checks after the run, from what is in Redis and PostgreSQL, not from counters
that died with a killed worker.

Per published entry (by the id XADD returned):
- dead-lettered: a dead letter on `<orders>:dlq` names it (`dlq_id`);
- applied: not dead-lettered, read by the group and acknowledged (no longer pending), and,
  with the SQL sink, present in its inbox table, which holds one row per entry whose
  transaction committed;
- lost: neither of the two.
Per effect, nothing applied twice:
- SQL: no entry twice in the inbox, and no entry both in the inbox and dead-lettered;
- relay: no event id twice on `payment-requests`;
- projection: its version guard applies each (order, version) at most once, so its `applied`
  counter cannot exceed the number of distinct versions published.
The copies themselves (read model, table, relay stream) are compared with the truth by
`worker.examples.report`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from worker.examples.order_payment import History, Names


@dataclass
class Accounting:
    """Every published entry's fate, and the guards' counters, as found after the run."""

    published: list[str]
    dead: dict[str, dict[str, str]]
    """Entry id -> its dead letter's fields."""
    pending: set[str]
    last_read: str
    inbox: set[str] | None = None
    """Entry ids in the SQL inbox; None without the SQL sink."""
    inbox_rows: int = 0
    relayed: Counter[str] = field(default_factory=Counter)
    """event_id -> entries on payment-requests."""
    projection: dict[str, int] = field(default_factory=dict)
    relay: dict[str, int] = field(default_factory=dict)
    versions_published: int = 0
    """Distinct (order, version) pairs among the well-formed events."""
    relayed_entries: int = 0
    """Entries the outbox relays added to the orders stream (not in `published`)."""

    @property
    def lost(self) -> list[str]:
        return [i for i in self.published if i not in self.dead and not self._applied(i)]

    @property
    def applied(self) -> int:
        return sum(1 for i in self.published if i not in self.dead and self._applied(i))

    def _applied(self, entry_id: str) -> bool:
        if entry_id in self.pending or _order(entry_id) > _order(self.last_read):
            return False
        return self.inbox is None or entry_id in self.inbox

    @property
    def twice(self) -> list[str]:
        """One line per effect found applied more than once (empty when all is well)."""
        found = []
        if self.inbox is not None:
            if self.inbox_rows != len(self.inbox):
                found.append(f"SQL inbox: {self.inbox_rows - len(self.inbox)} entries twice")
            both = self.inbox & set(self.dead)
            if both:
                found.append(f"SQL: {len(both)} entries both applied and dead-lettered")
        repeated = [event for event, n in self.relayed.items() if n > 1]
        if repeated:
            found.append(f"relay: {len(repeated)} event ids forwarded twice")
        if self.projection.get("applied", 0) > self.versions_published:
            found.append("projection: more versions applied than were published")
        return found


async def account(
    redis: Redis, names: Names, group: str, ids: list[str], scenario: History, dsn: str | None
) -> Accounting:
    """Gather the accounting of a finished run."""
    pending: list[Any] = await redis.xpending_range(
        names.orders, group, min="-", max="+", count=1_000_000
    )
    groups: list[Any] = await redis.xinfo_groups(names.orders)
    info = next(g for g in groups if _text(g["name"]) == group)
    dead = {}
    letters: list[Any] = await redis.xrange(names.orders + ":dlq") or []
    for _, raw in letters:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if fields.get("dlq_stream") == names.orders:
            dead[fields.get("dlq_id", "")] = fields
    relayed: Counter[str] = Counter()
    forwarded: list[Any] = await redis.xrange(names.requests) or []
    for _, raw in forwarded:
        relayed[_text(raw.get(b"event_id", b""))] += 1
    result = Accounting(
        published=ids,
        dead=dead,
        pending={_text(r["message_id"]) for r in pending},
        last_read=_text(info["last-delivered-id"]),
        relayed=relayed,
        projection=await _counts(redis, names.state + ":projection:counts"),
        relay=await _counts(redis, f"{names.state}:relay:counts:{names.orders}"),
        versions_published=len(
            {(f["key"], f["version"]) for f in scenario.published if "version" in f}
            | {(e.order_id, str(e.version)) for e in scenario.through_outbox}
        ),
    )
    result.relayed_entries = max(int(await redis.xlen(names.orders)) - len(ids), 0)
    if dsn is not None:
        result.inbox, result.inbox_rows = await _inbox(dsn, group, names)
    return result


async def _counts(redis: Redis, key: str) -> dict[str, int]:
    raw: dict[Any, Any] = await redis.hgetall(key)
    return {_text(k): int(v) for k, v in raw.items()}


async def _inbox(dsn: str, group: str, names: Names) -> tuple[set[str], int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT message_id FROM syncworker_inbox "
            "WHERE consumer_group = %s AND stream = %s AND sink = %s",
            [group, names.orders, names.table],
        )
        rows = await cursor.fetchall()
    return {r[0] for r in rows}, len(rows)


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
