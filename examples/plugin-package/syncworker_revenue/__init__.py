"""Revenue per currency from `order.completed` events, each order counted exactly once.

A plugin written against syncworker's public API only: `handlers.idempotent` turns the Redis
writes recorded in `effects` into one atomic step with the message's dedup marker and XACK,
so a crash or a redelivery never counts an order twice.
"""

from __future__ import annotations

from handlers.idempotent import Effects, IdempotentHandler
from worker import Message, Reject


class Revenue(IdempotentHandler):
    """Adds each completed order's amount to `<prefix>totals` (field = currency, in cents)
    and its id to the set `<prefix>orders`.

    Args:
        prefix: key prefix of the totals and the order set.
    """

    def __init__(self, prefix: str = "revenue:") -> None:
        self.prefix = prefix

    async def effects(self, msg: Message, tx: Effects) -> None:
        if msg.type != "order.completed":
            return  # recorded nothing: the message is only marked and acknowledged
        data = msg.data
        if not isinstance(data, dict) or "amount_cents" not in data or "currency" not in data:
            raise Reject("order.completed without amount_cents and currency")
        tx.hincrby(self.prefix + "totals", str(data["currency"]), int(data["amount_cents"]))
        tx.sadd(self.prefix + "orders", msg.key or "")
