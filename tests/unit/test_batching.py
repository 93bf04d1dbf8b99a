"""Batch forming in the lanes, batch outcomes in the test kit, and the start-up check."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from worker import ConfigError, Message, Outcome, Reject, Retry, handler
from worker.registry import validate
from worker.runtime.batching import BatchSpec, Gather, batch_cap
from worker.runtime.lanes import Lanes
from worker.testing import deliver_batch, make_message


def msg(n: int, key: str | None, attempt: int = 1) -> Message:
    raw = {b"n": str(n).encode()}
    if key is not None:
        raw[b"key"] = key.encode()
    return Message("s", f"{n}-0", raw, attempt)


async def ignore(m: Message) -> None:
    raise AssertionError("a batch stream's message reached the per-message path")


class TestBatchCap:
    @pytest.mark.parametrize(
        ("batch_max", "attempt", "cap"),
        [(100, 1, 100), (100, 2, 50), (100, 3, 25), (100, 8, 1), (1, 1, 1), (7, 2, 3), (16, 5, 1)],
    )
    def test_halves_per_extra_delivery_down_to_one(
        self, batch_max: int, attempt: int, cap: int
    ) -> None:
        """Delivery n of an entry allows batches of batch_max / 2^(n-1), at least one."""
        assert batch_cap(batch_max, attempt) == cap

    def test_a_retried_entry_ends_a_batch_that_is_too_big_for_it(self) -> None:
        """Fresh entries fill a batch; a retried one starts the next, smaller batch."""
        gather = Gather("s", BatchSpec(8, 0.0))
        gather.queue.extend([*(msg(n, None) for n in range(5)), msg(5, None, attempt=3)])
        gather.queue.extend(msg(n, None) for n in range(6, 12))
        assert [m.id for m in gather.take()] == [f"{n}-0" for n in range(5)]
        assert [m.id for m in gather.take()] == ["5-0", "6-0"]  # cap 8 >> 2 = 2
        assert len(gather.take()) == 5


class TestLanesWithBatches:
    async def test_batches_hold_one_message_per_key_and_keep_key_order(self) -> None:
        """No key appears twice in a batch or in two batches at once; each key's messages
        run in submit order; batches run on several lanes at once."""
        in_flight: set[bytes] = set()
        order: dict[bytes, list[int]] = {}
        sizes: list[int] = []
        running = 0
        peak = 0

        async def process_batch(batch: list[Message]) -> None:
            nonlocal running, peak
            keys = [m.raw[b"key"] for m in batch]
            assert len(set(keys)) == len(keys)
            assert not in_flight & set(keys)
            in_flight.update(keys)
            running += 1
            peak = max(peak, running)
            sizes.append(len(batch))
            await asyncio.sleep(0.001 * (len(batch) % 3))
            for m in batch:
                order.setdefault(m.raw[b"key"], []).append(int(m.raw[b"n"]))
            in_flight.difference_update(keys)
            running -= 1

        lanes = Lanes(4, ignore, batching={"s": BatchSpec(5, 0.001)}, process_batch=process_batch)
        lanes.start()
        for n in range(300):
            lanes.submit(msg(n, f"k{n % 23}"))
            if n % 17 == 0:
                await asyncio.sleep(0)
        for _ in range(500):
            if sum(map(len, order.values())) == 300:
                break
            await asyncio.sleep(0.01)
        lanes.close()
        await lanes.wait(5)
        assert sum(map(len, order.values())) == 300
        assert all(seq == sorted(seq) for seq in order.values())
        assert max(sizes) == 5 and peak > 1

    async def test_a_key_shared_with_a_plain_stream_keeps_order_and_paths(self) -> None:
        """One key on a batch stream and a plain stream: runs in submit order, each message
        by its own stream's path."""
        seen: list[tuple[str, str]] = []

        async def process(m: Message) -> None:
            seen.append(("single", m.id))
            await asyncio.sleep(0)

        async def process_batch(batch: list[Message]) -> None:
            seen.extend(("batch", m.id) for m in batch)
            await asyncio.sleep(0)

        lanes = Lanes(3, process, batching={"s": BatchSpec(10, 0.0)}, process_batch=process_batch)
        lanes.start()
        expected = []
        for n in range(12):
            stream = "s" if n % 3 else "plain"
            lanes.submit(Message(stream, f"{n}-0", {b"key": b"shared"}))
            expected.append(("batch" if stream == "s" else "single", f"{n}-0"))
        for _ in range(100):
            if len(seen) == 12:
                break
            await asyncio.sleep(0.01)
        lanes.close()
        await lanes.wait(1)
        assert seen == expected

    async def test_close_hands_back_what_waits_in_a_gather(self) -> None:
        """Messages queued for a batch that never started come back from close()."""
        release = asyncio.Event()

        async def process_batch(batch: list[Message]) -> None:
            await release.wait()

        lanes = Lanes(1, ignore, batching={"s": BatchSpec(2, 0.0)}, process_batch=process_batch)
        lanes.start()
        for n in range(5):
            lanes.submit(msg(n, f"k{n}"))
        await asyncio.sleep(0.01)
        unstarted = lanes.close()
        interrupted = await lanes.wait(0.05)
        assert sorted(m.id for m in unstarted) == ["2-0", "3-0", "4-0"]
        assert sorted(m.id for m in interrupted) == ["0-0", "1-0"]

    async def test_a_lane_that_dies_in_a_batch_settles_every_message(self) -> None:
        """A lane killed mid-batch is replaced; each message of its batch is settled as lost."""
        lost: list[str] = []
        calls = 0

        async def process_batch(batch: list[Message]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the lane's own bug")

        lanes = Lanes(
            1,
            ignore,
            lost=lambda m, exc: lost.append(m.id),
            batching={"s": BatchSpec(10, 0.0)},
            process_batch=process_batch,
        )
        lanes.start()
        for n in range(3):
            lanes.submit(msg(n, "k"))  # one key: three batches, one after the other
        await asyncio.sleep(0.05)
        assert lost == ["0-0"] and calls == 3
        lanes.close()
        await lanes.wait(1)


@handler(stream="orders", batch=True)
async def payments(msgs: list[Message]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for m in msgs:
        do = m.data.get("do")
        if do == "reject":
            outcomes.append(Reject("unknown currency"))
        elif do == "busy":
            outcomes.append(Retry("locked", delay=2.5))
        elif do == "crash":
            outcomes.append(RuntimeError("bug"))
        else:
            outcomes.append(None)
    return outcomes


class TestDeliverBatch:
    async def test_each_message_gets_the_runtime_outcome(self) -> None:
        """ok, dead_letter, retry with its delay, and retry, each for its own message."""
        datas = [{"do": "ok"}, {"do": "reject"}, {"do": "busy"}, {"do": "crash"}]
        results = await deliver_batch(payments, [make_message(data=d) for d in datas])
        outcomes = [(r.outcome, r.retry_delay) for r in results]
        assert outcomes == [("ok", None), ("dead_letter", None), ("retry", 2.5), ("retry", None)]
        assert [r.message.data for r in results] == datas

    async def test_a_failure_at_the_last_attempt_dead_letters(self) -> None:
        """At max_attempts a failing outcome dead-letters, as in the worker."""
        [result] = await deliver_batch(
            payments, [make_message(data={"do": "crash"}, attempt=3)], max_attempts=3
        )
        assert result.outcome == "dead_letter"

    async def test_a_raising_or_wrong_length_batch_fails_every_message(self) -> None:
        """A raised error, or too few outcomes, is every message's failure."""

        @handler(stream="orders", batch=True)
        async def short(msgs: list[Message]) -> list[Outcome]:
            return []

        @handler(stream="orders", batch=True)
        async def rejects(msgs: list[Message]) -> list[Outcome]:
            raise Reject("unusable batch")

        batch = [make_message(data={}), make_message(data={})]
        assert [r.outcome for r in await deliver_batch(short, batch)] == ["retry", "retry"]
        assert type((await deliver_batch(short, batch))[0].error).__name__ == "BatchResultError"
        assert [r.outcome for r in await deliver_batch(rejects, batch)] == ["dead_letter"] * 2


class TestBeforeTheCall:
    async def test_unwanted_types_and_invalid_events_never_reach_the_call(self) -> None:
        """Entries of other types are skipped, entries that fail `model` are dead-lettered;
        the call gets the rest, parsed."""
        calls: list[list[int]] = []

        class Paid(BaseModel):
            amount: int

        @handler(stream="orders", types=["order.paid"], model=Paid, batch=True)
        async def typed(msgs: list[Message]) -> list[Outcome]:
            calls.append([m.event.amount for m in msgs])
            return [None] * len(msgs)

        batch = [
            make_message("orders", type="order.paid", data={"amount": 1}),
            make_message("orders", type="order.shipped", data={}),
            make_message("orders", type="order.paid", data={"amount": "lots"}),
            make_message("orders", type="order.paid", data={"amount": 3}),
        ]
        results = await deliver_batch(typed, batch)
        assert [r.outcome for r in results] == ["ok", "skipped", "dead_letter", "ok"]
        assert type(results[2].error).__name__ == "InvalidEvent"
        assert calls == [[1, 3]]


class TestStartupCheck:
    def test_a_batch_handler_beside_another_on_one_stream_is_refused(self) -> None:
        """Start-up names the batch handler and the stream it must have to itself."""

        @handler(stream="orders")
        async def single(msg: Message) -> None:
            pass

        with pytest.raises(ConfigError, match="'payments' is a batch handler"):
            validate([payments, single.bind(["orders"])])
        validate([payments, single.bind(["other"])])
