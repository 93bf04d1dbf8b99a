"""The demo's producer side: the order service writes through a transactional outbox.

Each step of an order (created, paid, completed or cancelled) is one PostgreSQL transaction
that updates the service's `orders` row and adds the event to the outbox
(`worker.outbox.add`), so the event exists if and only if the change committed. An outbox
relay (`syncworker outbox run`, a child process) appends committed events to the orders
stream, where the demo's workers consume them like the rest.

The crash: half-way, the relay is frozen (SIGSTOP, so that it cannot publish what comes
next), the order service commits another third of its steps, and the relay is SIGKILLed
with those events committed and unpublished. A dual write (commit, then XADD) would have
lost them with the process; here they wait in the outbox, and a second relay publishes them.
The accounting then checks that every committed order reached the payments table at its
last committed version.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from worker.examples.order_payment import Event, Names, lifecycle

ORDERS_DDL = """CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    customer     text NOT NULL,
    amount_cents bigint NOT NULL,
    currency     text NOT NULL,
    status       text NOT NULL,
    version      bigint NOT NULL
)"""
"""The order service's own table: the state the events describe."""

UPSERT = (
    "INSERT INTO orders (order_id, customer, amount_cents, currency, status, version) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (order_id) DO UPDATE SET "
    "status = EXCLUDED.status, version = EXCLUDED.version"
)

START_S = 60.0
"""Longest a relay may take to start leading, or the outbox to drain."""


@dataclass
class Relay:
    """One `syncworker outbox run` child."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def says(self, event: str) -> bool:
        return f'"{event}"' in self.log_path.read_text(errors="replace")


@dataclass
class OrderService:
    """What the order service committed through the outbox, and what the crash left."""

    first: int
    orders: int
    seed: int
    steps: list[Event] = field(default_factory=list)
    """Committed steps, in commit order (one transaction each)."""
    unpublished_at_kill: int = 0
    """Events in the outbox, committed and never published, when the relay was killed."""
    relays: list[Relay] = field(default_factory=list)

    def plan(self) -> list[Event]:
        """Every order's steps, interleaved across orders, each order's in version order."""
        rng = random.Random(self.seed)
        lives = [lifecycle(rng, n) for n in range(self.first, self.first + self.orders)]
        return [life[step] for step in range(4) for life in lives if step < len(life)]

    def truth(self) -> dict[str, Event]:
        """order id -> its last committed event."""
        return {e.order_id: e for e in self.steps}


async def commit_steps(dsn: str, names: Names, steps: list[Event], done: list[Event]) -> None:
    """One transaction per step: the orders row and its outbox row, committed together."""
    import psycopg

    from worker.outbox import add

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for e in steps:
            d = e.data
            status = e.type.removeprefix("order.")
            await conn.execute(
                UPSERT,
                (e.order_id, d["customer"], d["amount_cents"], d["currency"], status, e.version),
            )
            await add(conn, names.orders, e.type, d, key=e.order_id, version=e.version,
                      event_id=e.event_id)  # fmt: skip
            await conn.commit()
            done.append(e)


async def prepare(dsn: str) -> None:
    """The outbox table (`syncworker outbox migrate`) and the orders table."""
    import psycopg

    from worker.outbox import migrate

    def run() -> None:
        with psycopg.connect(dsn) as conn:
            migrate(conn)
            conn.execute(ORDERS_DDL)

    await asyncio.to_thread(run)


async def start_relay(directory: Path, env: dict[str, str], dsn: str, name: str) -> Relay:
    """A relay child, its log in the run directory."""
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "outbox", "run", "--dsn", dsn,
            "--poll-interval", "0.2", "--lock-interval", "0.2", "--metrics-port", "0",
            env={**env, "SYNCWORKER_LOG_FORMAT": "json"},
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    return Relay(name, process, log_path)


async def launch(service: OrderService, dsn: str, directory: Path, env: dict[str, str]) -> None:
    """The tables, and two relay replicas: relay-1 leads, relay-2 stands by (as a deployment
    runs them). Started early, so that their start-up overlaps the rest of the demo."""
    await prepare(dsn)
    first = await start_relay(directory, env, dsn, "relay-1")
    service.relays.append(first)
    await _until(lambda: first.says("outbox.leading"), "relay-1 did not start leading", first)
    second = await start_relay(directory, env, dsn, "relay-2")
    service.relays.append(second)
    await _until(lambda: second.says("outbox.standby"), "relay-2 did not start", second)


async def outbox_rows(dsn: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT count(*) FROM syncworker_outbox")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def run(service: OrderService, dsn: str, names: Names, say: Any) -> None:
    """The producer-side timeline, once `launch` is done; `say` prints a timeline line."""
    plan = service.plan()
    third = len(plan) // 3
    first, second = service.relays
    say(f"order service: relay-1 (pid {first.process.pid}) leads, relay-2 stands by")
    await commit_steps(dsn, names, plan[:third], service.steps)
    await _until(_empty(dsn), "the outbox did not drain")
    say(f"order service committed {third} order steps (orders row + outbox row each); relayed")
    first.process.send_signal(signal.SIGSTOP)
    await commit_steps(dsn, names, plan[third : 2 * third], service.steps)
    service.unpublished_at_kill = await outbox_rows(dsn)
    first.process.send_signal(signal.SIGKILL)
    await first.process.wait()
    killed = time.monotonic()
    say(
        f"SIGKILL relay-1 (frozen first) with {service.unpublished_at_kill} committed events "
        "not yet published"
    )
    await _until(lambda: second.says("outbox.leading"), "relay-2 did not take over")
    say(f"relay-2 took over {time.monotonic() - killed:.2f} s later; the rest is committed")
    await commit_steps(dsn, names, plan[2 * third :], service.steps)
    await _until(_empty(dsn), "the outbox did not drain")
    say(f"outbox empty: all {len(service.steps)} committed events published")


async def stop_relays(service: OrderService) -> None:
    """SIGTERM the relays still running; bounded wait, then SIGKILL."""
    for relay in service.relays:
        if relay.process.returncode is None:
            relay.process.send_signal(signal.SIGCONT)
            relay.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(relay.process.wait(), 10)
            except TimeoutError:
                relay.process.kill()
                await relay.process.wait()


@dataclass
class Books:
    """The order service's accounting."""

    committed_orders: int
    committed_events: int
    unpublished_at_kill: int
    published_events: int
    """Distinct committed event ids on the orders stream."""
    reached: int
    """Committed orders whose payments row holds their last committed version."""

    @property
    def ok(self) -> bool:
        return (
            self.published_events == self.committed_events and self.reached == self.committed_orders
        )


async def account(service: OrderService, redis: Redis, names: Names, dsn: str) -> Books:
    """Read back from Redis and PostgreSQL what became of each committed event and order."""
    import psycopg

    wanted = {e.event_id for e in service.steps}
    seen: set[str] = set()
    entries: list[Any] = await redis.xrange(names.orders) or []
    for _, fields in entries:
        event_id = fields.get(b"event_id", b"").decode()
        if event_id in wanted:
            seen.add(event_id)
    truth = service.truth()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            f"SELECT order_id, version FROM {names.table} WHERE order_id = ANY(%s)",
            (list(truth),),
        )
        rows: dict[str, int] = {r[0]: int(r[1]) for r in await cursor.fetchall()}
    reached = sum(1 for order_id, e in truth.items() if rows.get(order_id) == e.version)
    return Books(len(truth), len(wanted), service.unpublished_at_kill, len(seen), reached)


def _empty(dsn: str) -> Any:
    async def check() -> bool:
        return await outbox_rows(dsn) == 0

    return check


async def _until(check: Any, failure: str, relay: Relay | None = None) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    tail = ""
    if relay is not None:
        tail = "; its log ends:\n" + relay.log_path.read_text(errors="replace")[-2000:]
    raise SystemExit(f"syncworker demo: {failure} within {START_S:.0f} s{tail}")
