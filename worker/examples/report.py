"""What `syncworker demo` prints: the set-up, the published history, and the synced copies.

Only what is the same on every run goes to stdout (no timings, ids or run names), so two runs
print the same report.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, TextIO

from redis.asyncio import Redis

from worker.examples.order_payment import History, Names, expected_read_model, expected_rows
from worker.runtime.worker import Worker

SAMPLE = 5
"""Entries of each copy shown in full."""


def header(out: TextIO, redis_note: str, pg_note: str) -> None:
    out.write("syncworker demo: the order & payment example\n")
    out.write(f"  Redis       {redis_note}\n")
    out.write(f"  PostgreSQL  {pg_note}\n\n")
    out.flush()


def published(out: TextIO, scenario: History, orders: int) -> None:
    out.write(
        f"The order service published {len(scenario.published)} events for {orders} orders "
        f"on 'orders': {scenario.duplicates} published twice, {scenario.swapped} orders with "
        f"two versions swapped, {scenario.malformed} malformed.\n\n"
    )
    out.flush()


def _table(out: TextIO, title: str, rows: list[tuple[str, int]]) -> None:
    out.write(f"{title}\n")
    for label, n in rows:
        out.write(f"  {label:<48}{n:>7}\n")
    out.write("\n")


def money(cents: Any, currency: Any) -> str:
    return f"{int(cents) / 100:>9.2f} {currency}"


async def results(
    out: TextIO,
    redis: Redis,
    names: Names,
    scenario: History,
    worker: Worker,
    dsn: str | None,
) -> int:
    """Print outcomes, the read model, the table and the dead letter; 0 if all match."""
    outcomes: Counter[str] = Counter()
    for (stream, _, outcome), n in worker.stats.messages.items():
        if stream == names.orders:
            outcomes[outcome] += n
    _table(
        out,
        "Deliveries (runtime)",
        [
            ("acknowledged", outcomes["ok"]),
            ("dead-lettered", outcomes["dead_letter"]),
            ("retried", outcomes["retry"]),
        ],
    )
    by_name = {h.name: h for h in worker.handlers}
    counts = {name: getattr(h, "counts", Counter()) for name, h in by_name.items()}
    rows = [
        ("projection: applied", counts["projection"]["applied"]),
        ("projection: skipped, not newer than the entity", counts["projection"]["stale"]),
    ]
    if "sql" in counts:
        rows += [
            ("sql: rows written", counts["sql"]["applied"]),
            ("sql: skipped, not newer than the row", counts["sql"]["stale"]),
            ("sql: redeliveries found in the inbox", counts["sql"]["duplicate"]),
        ]
    rows += [
        ("relay: payment.requested forwarded", counts["relay"]["forwarded"]),
        ("relay: duplicate events dropped", counts["relay"]["duplicate"]),
    ]
    _table(out, "Handlers", rows)
    ok = await _read_model(out, redis, names, scenario)
    if dsn is not None:
        ok = await _payments_table(out, dsn, names, scenario) and ok
    requests = await redis.xlen(names.requests)
    completed = sum(1 for e in scenario.truth.values() if e.type == "order.completed")
    match = requests == completed
    out.write(
        f"payment-requests stream: {requests} entries for {completed} completed orders: "
        f"{'exactly one each' if match else 'MISMATCH'}\n\n"
    )
    await _dead_letters(out, redis, names)
    return 0 if ok and match else 1


async def _read_model(out: TextIO, redis: Redis, names: Names, scenario: History) -> bool:
    found: dict[str, dict[str, str]] = {}
    async for key in redis.scan_iter(match=names.read_model + "*", count=1000):
        fields: dict[Any, Any] = await redis.hgetall(key)
        found[_text(key)[len(names.read_model) :]] = {_text(k): _text(v) for k, v in fields.items()}
    statuses = Counter(f.get("status", "?") for f in found.values())
    out.write(f"Read model in Redis (hash payment:<order_id>): {len(found)} payments\n")
    out.write("  " + "   ".join(f"{s} {statuses[s]}" for s in sorted(statuses)) + "\n")
    for order_id in sorted(found)[:SAMPLE]:
        f = found[order_id]
        paid = f"paid {f['paid_at'][:16]}" if "paid_at" in f else "not paid"
        out.write(
            f"  {order_id}  {f['status']:<9} {f['customer']}  "
            f"{money(f['amount_cents'], f['currency'])}  {paid}\n"
        )
    match = found == expected_read_model(scenario.truth)
    out.write(
        f"  matches the newest version of every order: {'yes' if match else 'NO'} "
        f"(cancelled orders are deleted)\n\n"
    )
    return match


async def _payments_table(out: TextIO, dsn: str, names: Names, scenario: History) -> bool:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            f"SELECT order_id, customer, amount_cents, currency, status, paid_at, version "
            f"FROM {names.table} ORDER BY order_id"
        )
        rows = await cursor.fetchall()
    found = {r[0]: tuple(r[1:]) for r in rows}
    statuses = Counter(r[4] for r in rows)
    out.write(f"PostgreSQL table {names.table}: {len(rows)} rows\n")
    out.write("  " + "   ".join(f"{s} {statuses[s]}" for s in sorted(statuses)) + "\n")
    for r in rows[:SAMPLE]:
        out.write(f"  {r[0]}  {r[4]:<9} {r[1]}  {money(r[2], r[3])}  version {r[6]}\n")
    expected = {
        order_id: (*row[:4], _datetime(row[4]), row[5])
        for order_id, row in expected_rows(scenario.truth).items()
    }
    match = found == expected
    out.write(f"  matches the newest version of every order: {'yes' if match else 'NO'}\n\n")
    return match


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def _dead_letters(out: TextIO, redis: Redis, names: Names) -> None:
    entries: list[Any] = await redis.xrange(names.orders + ":dlq") or []
    out.write(f"Dead-lettered ({len(entries)}), on orders:dlq with why:\n")
    for _, raw in entries:
        f = {_text(k): _text(v) for k, v in raw.items()}
        out.write(f"  type      {f.get('type')}   key {f.get('key')}\n")
        out.write(f"  data      {f.get('data')}\n")
        out.write(f"  error     {f.get('dlq_error_type')}: {f.get('dlq_error')}\n")
        out.write(f"  handler   {f.get('dlq_handler')}, attempt {f.get('dlq_attempts')}\n")
    out.write("\n")
