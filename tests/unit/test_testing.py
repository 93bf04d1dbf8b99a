"""worker.testing gives handler authors the runtime's outcomes without Redis."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError

from worker import MalformedMessage, Message, Reject, Retry, handler
from worker.testing import deliver, make_message


@handler(stream="orders", types=["order.paid"])
async def sync_payment(msg: Message) -> None:
    if msg.data.get("currency") == "XYZ":
        raise Reject("unknown currency")
    if msg.data.get("busy"):
        raise Retry("locked", delay=2.5)
    if msg.data.get("crash"):
        raise RuntimeError("bug")


class TestDeliver:
    async def test_outcomes_match_the_runtime_rules(self) -> None:
        """ok, skipped, dead_letter on Reject and bad JSON, retry with its delay."""
        assert (await deliver(sync_payment, type="order.paid", data={})).outcome == "ok"
        assert (await deliver(sync_payment, type="order.shipped")).outcome == "skipped"
        rejected = await deliver(sync_payment, type="order.paid", data={"currency": "XYZ"})
        assert rejected.outcome == "dead_letter" and isinstance(rejected.error, Reject)
        busy = await deliver(sync_payment, type="order.paid", data={"busy": True})
        assert (busy.outcome, busy.retry_delay) == ("retry", 2.5)
        bad_json = await deliver(sync_payment, type="order.paid", data="{oops")
        assert bad_json.outcome == "dead_letter"

    async def test_deeply_nested_data_dead_letters_on_the_first_attempt(self) -> None:
        """JSON nested past the recursion limit is a MalformedMessage: dead letter, no retry."""
        result = await deliver(sync_payment, type="order.paid", data="[" * 100_000)
        assert result.outcome == "dead_letter" and isinstance(result.error, MalformedMessage)
        assert "nested too deeply" in str(result.error)

    async def test_last_attempt_dead_letters(self) -> None:
        """A failure on the last allowed attempt dead-letters instead of retrying."""
        msg = make_message("orders", type="order.paid", data={"crash": True}, attempt=3)
        result = await deliver(sync_payment, msg, max_attempts=3)
        assert result.outcome == "dead_letter" and isinstance(result.error, RuntimeError)

    async def test_redis_refusing_writes_is_a_retry_even_on_the_last_attempt(self) -> None:
        """OOM (or READONLY, BUSY...) from the handler's Redis spends no attempt: a retry."""

        @handler(stream="orders")
        async def full(msg: Message) -> None:
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

        msg = make_message("orders", type="order.paid", attempt=3)
        result = await deliver(full, msg, max_attempts=3)
        assert result.outcome == "retry" and isinstance(result.error, OutOfMemoryError)
