"""The order & payment scenario: what the order service publishes and what must follow from it.

The order service publishes `order.created`, `order.paid`, `order.completed` and
`order.cancelled` on the `orders` stream. Each event carries the order's full state at its
version (event-carried state transfer), keyed by order id. syncworker keeps three things of
the payment service in sync with it:

- a Redis read model `payment:<order_id>` (projection): pending, captured or settled
  payments; a cancelled order's payment is deleted;
- a PostgreSQL `payments` table (SQL sink): one row per order, cancelled ones included;
- a `payment-requests` stream (relay): each completed order becomes one `payment.requested`.

This module ships inside the distribution (the `syncworker demo` command and the compose
stack's publisher run it from an installed package); `examples/order_payment/` in the source
tree holds the matching `worker.toml` and a README. The events are generated from a seed, so
each run publishes the same history: duplicates, swapped versions and one malformed event
included.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

STATUS = {
    "order.created": "pending",
    "order.paid": "captured",
    "order.completed": "settled",
    "order.cancelled": "cancelled",
}
"""Payment status that each order event leads to."""

READ_MODEL_FIELDS = ["order_id", "customer", "amount_cents", "currency", "paid_at"]
SQL_COLUMNS = ["customer", "amount_cents", "currency", "paid_at"]
RELAY_FIELDS = ["order_id", "customer", "amount_cents", "currency"]

PAYMENTS_DDL = """CREATE TABLE IF NOT EXISTS payments (
    order_id     text PRIMARY KEY,
    customer     text NOT NULL,
    amount_cents bigint NOT NULL,
    currency     text NOT NULL,
    status       text NOT NULL,
    paid_at      timestamptz,
    version      bigint NOT NULL
)"""


class OrderState(BaseModel):
    """The payload of every order event: the order's full state at its version.

    Each route of the example declares it (`model` in its [[routes]] entry), so an event of
    the wrong shape is dead-lettered with its field errors before any handler writes a thing;
    `syncworker schema --config examples/order_payment/worker.toml` prints it for producers.
    """

    order_id: str = Field(min_length=1)
    customer: str = Field(min_length=1)
    amount_cents: int = Field(ge=0)
    currency: str = Field(pattern="^[A-Z]{3}$")
    paid_at: datetime | None = None
    status: str


MODEL = "worker.examples.order_payment:OrderState"
"""`OrderState` as a route's `model` setting names it."""

EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MALFORMED_DATA = '{"order_id": "order-00042", "amount_cents": 12'
"""The truncated payload of the one malformed event: not JSON, so it is dead-lettered."""


@dataclass(frozen=True)
class Names:
    """Where the scenario lives in Redis (and PostgreSQL)."""

    orders: str = "orders"
    requests: str = "payment-requests"
    read_model: str = "payment:"
    state: str = "syncworker:payments"
    table: str = "payments"

    @classmethod
    def isolated(cls, run: str) -> Names:
        """Names under `demo:<run>:`, so a demo never touches anything it did not create."""
        base = f"demo:{run}:"
        return cls(base + "orders", base + "payment-requests", base + "payment:", base + "sync")


@dataclass(frozen=True)
class Event:
    type: str
    order_id: str
    version: int
    data: dict[str, Any]
    event_id: str

    def fields(self) -> dict[str, str]:
        """The stream entry, in the field convention (type, key, data, event_id, version)."""
        return {
            "type": self.type,
            "key": self.order_id,
            "data": json.dumps(self.data, separators=(",", ":")),
            "event_id": self.event_id,
            "version": str(self.version),
        }


@dataclass
class History:
    """The order service's events, as published (with noise) and as the truth (without)."""

    published: list[dict[str, str]] = field(default_factory=list)
    truth: dict[str, Event] = field(default_factory=dict)
    """order id -> its newest event: what every copy must end up reflecting."""
    duplicates: int = 0
    swapped: int = 0
    malformed: int = 0
    through_outbox: list[Event] = field(default_factory=list)
    """Events the order service committed through the outbox (`worker.examples.
    order_service`); the relay publishes them, so they are not in `published`."""


def lifecycle(rng: random.Random, n: int) -> list[Event]:
    """One order's events in version order, each carrying the full order state."""
    order_id = f"order-{n:05d}"
    state: dict[str, Any] = {
        "order_id": order_id,
        "customer": f"customer-{rng.randint(1, 250):03d}",
        "amount_cents": rng.randint(500, 50_000),
        "currency": rng.choice(["EUR", "EUR", "USD", "GBP"]),
        "paid_at": None,
    }
    at = EPOCH + timedelta(minutes=n)
    fate = rng.random()
    steps = ["order.created"]
    if fate < 0.70:
        steps += ["order.paid", "order.completed"]
    elif fate < 0.85:
        steps += ["order.paid", "order.cancelled"]
    elif fate < 0.95:
        steps += ["order.cancelled"]
    events = []
    for version, kind in enumerate(steps, start=1):
        at += timedelta(seconds=rng.randint(5, 600))
        if kind == "order.paid":
            state["paid_at"] = at.isoformat()
        snapshot = {**state, "status": kind.removeprefix("order.")}
        events.append(Event(kind, order_id, version, snapshot, f"{order_id}-v{version}"))
    return events


def history(orders: int = 1000, seed: int = 7) -> History:
    """The scenario's events: interleaved lifecycles with duplicates, swaps and one bad event.

    - about 5% of events are published twice (same event id and version, a new entry);
    - about 8% of orders have two consecutive versions published in the wrong order;
    - one `order.paid` event carries a truncated JSON payload.
    """
    rng = random.Random(seed)
    lives = [lifecycle(rng, n) for n in range(1, orders + 1)]
    result = History(truth={life[-1].order_id: life[-1] for life in lives})
    for life in lives:
        if len(life) > 1 and rng.random() < 0.08:
            i = rng.randrange(len(life) - 1)
            life[i], life[i + 1] = life[i + 1], life[i]
            result.swapped += 1
    # Interleave: at each step take the next event of one of a few open orders.
    window: list[list[Event]] = []
    waiting = list(reversed(lives))
    ordered: list[Event] = []
    while waiting or window:
        while len(window) < 8 and waiting:
            window.append(list(waiting.pop()))
        life = rng.choice(window)
        ordered.append(life.pop(0))
        if not life:
            window.remove(life)
    result.published = [event.fields() for event in ordered]
    # Producers retry: some events go out again a little later, as new entries.
    for i in reversed(range(len(ordered))):
        if rng.random() < 0.05:
            result.duplicates += 1
            later = rng.randint(i + 1, min(i + 30, len(result.published)))
            result.published.insert(later, ordered[i].fields())
    bad = {"type": "order.paid", "key": "order-00042", "data": MALFORMED_DATA}
    result.published.insert(len(result.published) // 2, {**bad, "event_id": "order-00042-bad"})
    result.malformed = 1
    return result


def expected_read_model(truth: dict[str, Event]) -> dict[str, dict[str, str]]:
    """order id -> read-model hash, for every order whose newest event is not a cancel."""
    out = {}
    for order_id, event in truth.items():
        if event.type == "order.cancelled":
            continue
        fields = {
            k: _text(event.data[k]) for k in READ_MODEL_FIELDS if event.data.get(k) is not None
        }
        fields["status"] = STATUS[event.type]
        out[order_id] = fields
    return out


def expected_rows(truth: dict[str, Event]) -> dict[str, tuple[Any, ...]]:
    """order id -> (customer, amount_cents, currency, status, paid_at iso or None, version)."""
    return {
        order_id: (
            e.data["customer"],
            e.data["amount_cents"],
            e.data["currency"],
            STATUS[e.type],
            e.data["paid_at"],
            e.version,
        )
        for order_id, e in truth.items()
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def routes(names: Names, *, sql: bool = True, dsn: str | None = None) -> list[dict[str, Any]]:
    """The worker's [[routes]]: projection, SQL sink and relay, all on the orders stream.

    Three handlers share the stream, so none may acknowledge on its own (`ack = false`) or
    take batches (`batch = false`: a batch handler must be alone on its stream):
    each one's guard (versions, inbox, dedup marker) keeps its effect exactly once, and the
    runtime acknowledges when all three succeeded.
    """
    projection = {
        "stream": names.orders,
        "handler": "projection",
        "model": MODEL,
        "options": {
            "prefix": names.read_model,
            "state_prefix": names.state + ":projection",
            "fields": READ_MODEL_FIELDS,
            "ack": False,
            "batch": False,
            "events": {
                "order.created": {"action": "set", "values": {"status": "pending"}},
                "order.paid": {"action": "set", "values": {"status": "captured"}},
                "order.completed": {"action": "set", "values": {"status": "settled"}},
                "order.cancelled": "delete",
            },
        },
    }
    sql_sink: dict[str, Any] = {
        "stream": names.orders,
        "handler": "sql",
        "model": MODEL,
        "options": {
            "table": names.table,
            "key_column": "order_id",
            "columns": SQL_COLUMNS,
            "values": {kind: {"status": status} for kind, status in STATUS.items()},
            "schema": PAYMENTS_DDL.replace("payments", names.table, 1),
            "batch": False,
        },
    }
    if dsn is not None:
        sql_sink["options"]["dsn"] = dsn
    relay = {
        "stream": names.orders,
        "handler": "relay",
        "types": ["order.completed"],
        "model": MODEL,
        "options": {
            "to": names.requests,
            "rename": {"order.completed": "payment.requested"},
            "fields": RELAY_FIELDS,
            "state_prefix": names.state + ":relay",
            "dedup": "event_id",
            "ack": False,
            "batch": False,
        },
    }
    return [projection, sql_sink, relay] if sql else [projection, relay]
