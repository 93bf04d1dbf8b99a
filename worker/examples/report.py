"""What `syncworker demo` prints: the set-up, the timeline, the hand-overs, the accounting of
every event, the synced copies and the keys the run used.

Ids, pids, key names and timings differ from run to run; the counts of the scenario do not.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, TextIO

from redis.asyncio import Redis

from worker.examples import order_service as service
from worker.examples.checks import Accounting
from worker.examples.handover import HandOver, entries
from worker.examples.order_payment import History, Names, expected_read_model, expected_rows

SAMPLE = 5
"""Entries of each copy shown in full."""


def header(out: TextIO, redis_note: str, pg_note: str, workers: str) -> None:
    out.write("syncworker demo: the order & payment example, with workers killed mid-run\n")
    out.write(f"  Redis       {redis_note}\n")
    out.write(f"  PostgreSQL  {pg_note}\n")
    out.write(f"  Workers     {workers}\n\n")
    out.flush()


def published(out: TextIO, scenario: History, orders: int, stream: str) -> None:
    out.write(
        f"The order service publishes {len(scenario.published)} events for {orders} orders "
        f"on {stream}: {scenario.duplicates} published twice, {scenario.swapped} orders with "
        f"two versions swapped, {scenario.malformed} malformed.\n\n"
        "Timeline (seconds since the first event was published)\n"
    )
    out.flush()


def hand_overs(out: TextIO, reports: list[HandOver], claim_idle: float) -> bool:
    """The hand-over of each signalled worker; True if every one finished."""
    out.write(
        "\nHand-over (measured in Redis from the signal until the entries left are finished)\n"
    )
    ok = True
    for h in reports:
        out.write(f"  {h.worker}  {h.signal}, exit code {h.exit_code}: ")
        if h.signal == "SIGKILL":
            out.write(f"{entries(len(h.left))} left pending on it\n")
        else:
            drain = h.drain
            released, interrupted = drain.get("released", 0), drain.get("interrupted", 0)
            other = max(len(h.left) - int(released) - int(interrupted), 0)
            out.write(
                f"drained in {float(drain.get('duration_s', 0.0)):.2f} s; "
                f"{entries(len(h.left))} handed back ({released} released unstarted, "
                f"{interrupted} interrupted, {other} left pending unreleased)\n"
            )
        taken = ", ".join(f"{name} {n}" for name, n in sorted(h.taken_by.items())) or "none"
        out.write(f"            taken over by: {taken}\n")
        if h.finished_after is None:
            ok = False
            out.write(
                f"            NOT FINISHED: {len(h.left) - len(h.finish_times)} still pending\n"
            )
        elif h.finish_times:
            half = sorted(h.finish_times)[(len(h.finish_times) - 1) // 2]
            out.write(
                f"            all finished {h.finished_after:.2f} s after the {h.signal} "
                f"(half of them after {half:.2f} s)\n"
            )
        else:
            out.write("            nothing to hand over\n")
    out.write(
        f"  Survivors take over a silent consumer's entries once they sat idle for "
        f"claim_idle ({claim_idle:g} s here, 60 s by default).\n\n"
    )
    return ok


def accounting(out: TextIO, books: Accounting) -> bool:
    """Published, applied, dead-lettered, lost, applied twice; True if none lost or twice."""
    sql = books.inbox is not None
    where = "acknowledged and in the SQL inbox" if sql else "acknowledged"
    lost, twice = books.lost, books.twice
    _table(
        out,
        f"Every event accounted for (read back from Redis{' and PostgreSQL' if sql else ''})",
        [
            ("published", len(books.published)),
            (f"applied ({where})", books.applied),
            ("dead-lettered", len(books.dead)),
            ("lost (neither applied nor dead-lettered)", len(lost)),
            ("applied twice", len(twice)),
        ],
    )
    for line in twice:
        out.write(f"  APPLIED TWICE: {line}\n")
    if lost:
        out.write(f"  LOST: {', '.join(lost[:10])}{' ...' if len(lost) > 10 else ''}\n\n")
    runs = sum(books.projection.values())
    rows = [
        ("projection: applied", books.projection.get("applied", 0)),
        ("projection: skipped, not newer than the entity", books.projection.get("stale", 0)),
        (
            "projection: runs beyond one per entry (redeliveries)",
            max(runs - books.applied - books.relayed_entries, 0),
        ),
        ("relay: payment.requested forwarded", books.relay.get("forwarded", 0)),
        ("relay: already forwarded, dropped", books.relay.get("duplicate", 0)),
    ]
    if books.inbox is not None:
        rows.append(("sql: inbox rows (entries committed)", books.inbox_rows))
    _table(out, "Guards (counters the handlers keep in Redis; redeliveries count as skipped)", rows)
    return not lost and not twice


def order_service(out: TextIO, books: service.Books) -> bool:
    """The producer side's accounting; True if every committed order reached payments."""
    _table(
        out,
        "The order service through the outbox (orders row and event in one transaction)",
        [
            ("orders committed", books.committed_orders),
            ("events committed", books.committed_events),
            ("committed, unpublished when relay-1 was SIGKILLed", books.unpublished_at_kill),
            ("events published by the relays (distinct)", books.published_events),
            ("orders in payments at their last committed version", books.reached),
        ],
    )
    if not books.ok:
        out.write("  LOST: committed orders or events missing downstream\n\n")
    return books.ok


def _table(out: TextIO, title: str, rows: list[tuple[str, int]]) -> None:
    out.write(f"{title}\n")
    for label, n in rows:
        out.write(f"  {label:<52}{n:>7}\n")
    out.write("\n")


def money(cents: Any, currency: Any) -> str:
    return f"{int(cents) / 100:>9.2f} {currency}"


async def copies(
    out: TextIO, redis: Redis, names: Names, scenario: History, dsn: str | None
) -> bool:
    """Print the read model, the table, the relay stream and the dead letter; True if all match."""
    ok = await _read_model(out, redis, names, scenario)
    if dsn is not None:
        ok = await _payments_table(out, dsn, names, scenario) and ok
    requests = await redis.xlen(names.requests)
    completed = sum(1 for e in scenario.truth.values() if e.type == "order.completed")
    match = requests == completed
    out.write(
        f"Stream {names.requests}: {requests} payment.requested for {completed} completed "
        f"orders: {'exactly one each' if match else 'MISMATCH'}\n\n"
    )
    await _dead_letters(out, redis, names)
    return ok and match


async def _read_model(out: TextIO, redis: Redis, names: Names, scenario: History) -> bool:
    found: dict[str, dict[str, str]] = {}
    async for key in redis.scan_iter(match=names.read_model + "*", count=1000):
        fields: dict[Any, Any] = await redis.hgetall(key)
        found[_text(key)[len(names.read_model) :]] = {_text(k): _text(v) for k, v in fields.items()}
    statuses = Counter(f.get("status", "?") for f in found.values())
    out.write(f"Read model in Redis (hashes {names.read_model}<order_id>): {len(found)} payments\n")
    out.write("  " + "   ".join(f"{s} {statuses[s]}" for s in sorted(statuses)) + "\n")
    for order_id in sorted(found)[:SAMPLE]:
        f = found[order_id]
        paid = f"paid {f['paid_at'][:16]}" if "paid_at" in f else "not paid"
        out.write(
            f"  {order_id}  {f['status']:<9} {f['customer']}  "
            f"{money(f['amount_cents'], f['currency'])}  {paid}\n"
        )
    raw: dict[Any, Any] = await redis.hgetall(names.state + ":projection:versions")
    versions = {_text(k): int(v) for k, v in raw.items()}
    newest = {order_id: event.version for order_id, event in scenario.truth.items()}
    match = found == expected_read_model(scenario.truth) and versions == newest
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
    out.write(f"Dead-lettered ({len(entries)}), on {names.orders}:dlq with why:\n")
    for _, raw in entries:
        f = {_text(k): _text(v) for k, v in raw.items()}
        out.write(f"  type      {f.get('type')}   key {f.get('key')}\n")
        out.write(f"  data      {f.get('data')}\n")
        out.write(f"  error     {f.get('dlq_error_type')}: {f.get('dlq_error')}\n")
        out.write(f"  handler   {f.get('dlq_handler')}, attempt {f.get('dlq_attempts')}\n")
    out.write("\n")
