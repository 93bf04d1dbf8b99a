"""Keep a payment record per order in sync with the order service's `order.completed` events.

Written in docs/tutorial.md, step by step: a typed handler (`model`), whose events changed
shape once (`Versions`): the checkout service first sent `amount_cents`, then, from schema
version 2 on, `amount` as a decimal string. Old events, still in the stream or replayed from
the dead letters, are upcast to the newest shape, so `handle` knows one shape only.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

from worker import Handler, HandlerContext, Message, Versions


class OrderCompletedV1(BaseModel):
    order_id: str
    amount_cents: int
    currency: str


class OrderCompleted(BaseModel):
    order_id: str
    amount: Decimal
    currency: str


def v1_to_v2(v1: OrderCompletedV1) -> OrderCompleted:
    amount = Decimal(v1.amount_cents) / 100
    return OrderCompleted(order_id=v1.order_id, amount=amount, currency=v1.currency)


class PaymentSync(Handler):
    """Writes `<prefix><order_id>`: a hash of the order's amount (in cents) and currency.

    Writing the same hash again changes nothing, so a redelivered event is harmless.

    Args:
        prefix: key prefix of the payment hashes.
    """

    types = frozenset({"order.completed"})
    model = Versions({1: OrderCompletedV1, 2: OrderCompleted}, upcast={1: v1_to_v2})

    def __init__(self, prefix: str = "payment:") -> None:
        self.prefix = prefix

    async def on_startup(self, ctx: HandlerContext) -> None:
        self.redis = ctx.redis

    async def handle(self, msg: Message) -> None:
        order: OrderCompleted = msg.event
        mapping = {"amount_cents": int(order.amount * 100), "currency": order.currency}
        await self.redis.hset(self.prefix + order.order_id, mapping={**mapping, "status": "settled"})
