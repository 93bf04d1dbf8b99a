"""PaymentSync, tested with syncworker's test kit: no Redis, the runtime's own rules."""

import asyncio

from syncworker_revenue.payments import PaymentSync
from worker.testing import deliver


class FakeRedis:
    def __init__(self):
        self.hashes = {}

    async def hset(self, name, mapping):
        self.hashes.setdefault(name, {}).update(mapping)


def run(data, schema_version=None):
    """Deliver one order.completed event to PaymentSync; return the outcome and the writes."""
    sync = PaymentSync().bind(["orders"])
    sync.redis = FakeRedis()
    event = {"type": "order.completed", "data": data, "schema_version": schema_version}
    result = asyncio.run(deliver(sync, **event))
    return result, sync.redis.hashes


def test_a_completed_order_is_recorded():
    result, hashes = run({"order_id": "o-1", "amount_cents": 1990, "currency": "EUR"})
    assert result.outcome == "ok"
    assert hashes["payment:o-1"] == {"amount_cents": 1990, "currency": "EUR", "status": "settled"}


def test_a_payload_of_the_wrong_shape_is_dead_lettered():
    result, hashes = run({"order_id": "o-3", "amount_cents": "a lot", "currency": "EUR"})
    assert result.outcome == "dead_letter"
    assert "amount_cents: Input should be a valid integer" in str(result.error)
    assert hashes == {}
