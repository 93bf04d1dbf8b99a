"""Dead letters are exact copies, written only by the consumer that owns the entry.

These drive the settler directly against a real redis-server: one entry made pending on a
consumer, then dead-lettered, then replayed, with every field compared as Redis stores it.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tests.helpers import dead_letters, eventually, make_settings, pending_count, running
from worker import Message, Reject, handler
from worker.admin import deadletters
from worker.admin.deadletters import REPLAY_WIDE, replayed_fields
from worker.redis_server import RedisServer
from worker.runtime.dead_letter import NOT_OWNED, SETTLE_WIDE, DeadLetter, write_wide
from worker.runtime.ledger import Ledger
from worker.runtime.policy import RetryPolicy
from worker.runtime.settle import Settler
from worker.runtime.stats import Stats
from worker.wide import add_then_check, read_fields, tail

pytestmark = pytest.mark.redis

RAW_RANGE = "return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2])"


async def raw_entries(redis: Redis, stream: str) -> list[tuple[str, list[bytes]]]:
    """Every entry of `stream` with its fields as Redis stores them: a flat list, repeats kept."""
    found: Any = await redis.eval(RAW_RANGE, 1, stream, "-", "+")
    return [(i.decode(), list(f)) for i, f in found]


async def pending_entry(
    redis: Redis, names: dict[str, str], fields: list[bytes | str], consumer: str = "c1"
) -> Message:
    """XADD an entry with exactly these fields and deliver it to `consumer`."""
    stream, group = names["stream"], names["group"]
    entry_id = (await redis.execute_command("XADD", stream, "*", *fields)).decode()
    await redis.xgroup_create(stream, group, id="0")
    reply: Any = await redis.xreadgroup(group, consumer, {stream: ">"}, count=1)
    assert reply and reply[0][1][0][0].decode() == entry_id
    return Message(stream, entry_id, reply[0][1][0][1], 1, group)


def settler_for(redis: Redis, url: str, group: str, consumer: str = "c1") -> Settler:
    settings = make_settings(url, group, consumer=consumer)
    return Settler(redis, settings, RetryPolicy.from_settings(settings), Ledger(100), Stats())


def wide(n: int) -> list[bytes | str]:
    flat: list[bytes | str] = []
    for i in range(n):
        flat += (f"f{i}", f"v{i}")
    return flat


class TestExactCopies:
    async def test_repeated_and_dlq_prefixed_fields_survive_a_dead_letter_and_replay(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The copy keeps every field in order, repeats and `dlq_*` originals included; replay
        restores exactly those, followed by the original stream and id."""
        fields: list[bytes | str] = [
            "a", "1", "a", "2", "dlq_error", "mine", "b", "\xff", "dlq_fields", "7",
        ]  # fmt: skip
        msg = await pending_entry(redis, names, fields)
        settler = settler_for(redis, redis_server.url, names["group"])
        settler.ledger.hold(msg)
        settler.dead_letter(msg, Reject("no"), "h")
        await settler.flush()

        dlq = names["stream"] + ":dlq"
        [letter] = await deadletters.read(redis, dlq)
        pairs = zip(fields[::2], fields[1::2], strict=True)
        assert letter.pairs == [(str(k).encode(), str(v).encode()) for k, v in pairs]
        assert letter.meta["id"] == msg.id and letter.meta["error"] == "no"
        [new_id] = await deadletters.replay(redis, dlq, names["stream"], [letter.id])
        [(_, _), (replayed_id, replayed)] = await raw_entries(redis, names["stream"])
        assert replayed_id == new_id
        expected = [f.encode() if isinstance(f, str) else f for f in fields]
        expected += [
            b"replay_of_stream",
            names["stream"].encode(),
            b"replay_of_id",
            msg.id.encode(),
        ]
        assert replayed == expected
        assert await redis.xlen(dlq) == 0

    async def test_an_entry_with_thousands_of_fields_is_dead_lettered_and_replayed(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """5,000 fields (more than a Lua call can unpack) are dead-lettered, acked and replayed."""
        fields = wide(5000)
        msg = await pending_entry(redis, names, fields)
        settler = settler_for(redis, redis_server.url, names["group"])
        settler.ledger.hold(msg)
        with capture_logs() as logs:
            settler.dead_letter(msg, Reject("too wide to handle"), "h")
            await settler.flush()
        assert not [e for e in logs if e["event"] == "dead_letter.failed"]
        assert await pending_count(redis, names["stream"], names["group"]) == 0
        assert len(settler.ledger) == 0

        dlq = names["stream"] + ":dlq"
        [letter] = await deadletters.read(redis, dlq)
        assert len(letter.pairs) == 5000 and letter.pairs[4999] == (b"f4999", b"v4999")
        assert letter.meta["error"] == "too wide to handle"
        [new_id] = await deadletters.replay(redis, dlq, names["stream"], [letter.id])
        assert new_id is not None
        [_, (_, replayed)] = await raw_entries(redis, names["stream"])
        assert replayed[:10000] == [f.encode() for f in fields if isinstance(f, str)]
        assert replayed[10000:] == [
            b"replay_of_stream", names["stream"].encode(), b"replay_of_id", msg.id.encode(),
        ]  # fmt: skip
        assert await redis.xlen(dlq) == 0
        # A second replay of the same dead letter finds nothing, and writes nothing.
        assert await deadletters.replay(redis, dlq, names["stream"], [letter.id]) == [None]
        assert await redis.xlen(names["stream"]) == 2

    async def test_an_entry_deleted_while_pending_keeps_the_fields_it_was_read_with(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """If the entry was deleted from its stream meanwhile, the copy uses the fields the
        worker read, rather than losing them."""
        msg = await pending_entry(redis, names, ["k", "v", "n", "1"])
        await redis.xdel(names["stream"], msg.id)
        settler = settler_for(redis, redis_server.url, names["group"])
        settler.ledger.hold(msg)
        settler.dead_letter(msg, Reject("gone"), "h")
        await settler.flush()
        [letter] = await deadletters.read(redis, names["stream"] + ":dlq")
        assert letter.pairs == [(b"k", b"v"), (b"n", b"1")]
        assert await pending_count(redis, names["stream"], names["group"]) == 0


class TestOwnership:
    async def test_an_entry_a_peer_took_over_is_not_dead_lettered(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Only the consumer the entry is pending on may dead-letter and ack it."""
        msg = await pending_entry(redis, names, ["k", "v"])
        await redis.xclaim(names["stream"], names["group"], "peer", 0, [msg.id])
        settler = settler_for(redis, redis_server.url, names["group"])
        settler.ledger.hold(msg)
        with capture_logs() as logs:
            settler.dead_letter(msg, Reject("stale"), "h")
            await settler.flush()
        assert await redis.xlen(names["stream"] + ":dlq") == 0
        [row] = await redis.xpending_range(names["stream"], names["group"], "-", "+", 10)
        assert row["consumer"] == b"peer"  # still the peer's, unacked
        assert [e["message_id"] for e in logs if e["event"] == "dead_letter.not_owned"] == [msg.id]
        assert settler.stats.dead_letter_not_owned[names["stream"]] == 1
        assert len(settler.ledger) == 0

    @pytest.mark.parametrize("fields", [2, 10000], ids=["narrow", "wide"])
    async def test_a_resend_after_a_lost_reply_writes_one_dead_letter(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str], fields: int
    ) -> None:
        """Sending the same dead letter twice (a reply lost, the flush repeated) writes one."""
        msg = await pending_entry(redis, names, wide(fields // 2))
        settler = settler_for(redis, redis_server.url, names["group"])
        for _ in range(2):
            settler.ledger.hold(msg)
            settler.dead_letter(msg, Reject("bad"), "h")
            await settler.flush()
        assert await redis.xlen(names["stream"] + ":dlq") == 1
        assert settler.stats.dead_letter_not_owned[names["stream"]] == 1


class TestWideRaces:
    """The wide path writes first and checks in the same MULTI; a lost race undoes the write."""

    async def test_an_entry_taken_over_before_the_wide_write_leaves_no_dead_letter(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """A peer claims the entry between the script's check and the MULTI: the copy just
        added is deleted again and the entry stays the peer's."""
        msg = await pending_entry(redis, names, wide(5000))
        await redis.xadd(names["stream"] + ":dlq", {"earlier": "letter"})
        await redis.xclaim(names["stream"], names["group"], "peer", 0, [msg.id])
        letter = DeadLetter(msg, "Reject", "late", "h")
        dlq = names["stream"] + ":dlq"
        settle = redis.register_script(SETTLE_WIDE)
        status, _ = await write_wide(redis, settle, dlq, letter, msg.group, "c1")
        assert status == NOT_OWNED
        assert [f for _, f in await redis.xrange(dlq)] == [{b"earlier": b"letter"}]
        assert await pending_count(redis, names["stream"], names["group"]) == 1

    async def test_a_wide_replay_that_lost_the_race_removes_its_copy(
        self, redis: Redis, names: dict[str, str]
    ) -> None:
        """Two operators replay one wide dead letter: the one whose dead letter is gone by its
        EXEC deletes the entry it just added, so the entry is replayed once."""
        stream, dlq = names["stream"], names["stream"] + ":dlq"
        dead_id = (await redis.execute_command("XADD", dlq, "*", *wide(5000))).decode()
        flat = await read_fields(redis, dlq, dead_id)
        assert flat is not None
        items = replayed_fields(flat)
        await redis.xadd(stream, {"earlier": "entry"})
        await redis.xdel(dlq, dead_id)  # the other operator's replay got there first
        _, status = await add_then_check(
            redis,
            [[stream, "*", *items]],
            redis.register_script(REPLAY_WIDE),
            keys=[dlq, stream],
            args=[dead_id, len(items), *tail(items)],
        )
        assert status == b"missing"
        assert [f for _, f in await redis.xrange(stream)] == [{b"earlier": b"entry"}]


class TestInTheWorker:
    async def test_wide_poison_entries_do_not_wedge_the_worker(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """Rejected entries of 5,000 fields are dead-lettered and acked; later ones still run."""
        stream, group = names["stream"], names["group"]
        handled: list[str] = []

        @handler(stream=stream)
        async def picky(msg: Message) -> None:
            if len(msg.raw) > 1:
                raise Reject("too many fields")
            handled.append(msg.id)

        for _ in range(3):
            await redis.execute_command("XADD", stream, "*", *wide(5000))
        last = await redis.xadd(stream, {"ok": "1"})
        settings = make_settings(redis_server.url, group, batch_size=2, concurrency=2)
        async with running(settings, [picky]):
            await eventually(lambda: handled == [last.decode()])
            await eventually(lambda: _nothing_pending(redis, stream, group))
        assert await redis.xlen(stream + ":dlq") == 3


async def _nothing_pending(redis: Redis, stream: str, group: str) -> bool:
    return await pending_count(redis, stream, group) == 0


class TestReasons:
    async def test_a_handler_failure_carries_its_traceback(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """The dead letter keeps the end of the traceback; retry and dead-letter log lines
        carry the exception itself (exc_info) for the renderer."""
        stream, group = names["stream"], names["group"]

        def charge(amount: int) -> None:
            raise ValueError(f"card declined for {amount}")

        @handler(stream=stream, name="payments")
        async def pay(msg: Message) -> None:
            charge(12)

        await redis.xadd(stream, {"n": "1"})
        with capture_logs() as logs:
            async with running(make_settings(redis_server.url, group, max_attempts=2), [pay]):
                await eventually(lambda: _nothing_pending_and_dead(redis, stream, group))
        [letter] = await dead_letters(redis, stream)
        assert letter["dlq_error"] == "card declined for 12"
        assert "in charge" in letter["dlq_traceback"]
        assert letter["dlq_traceback"].endswith("ValueError: card declined for 12\n")
        [retry] = [e for e in logs if e["event"] == "message.retry"]
        [dead] = [e for e in logs if e["event"] == "message.dead_lettered"]
        for line in (retry, dead):
            assert isinstance(line["exc_info"], ValueError)

    async def test_a_dead_letter_written_late_keeps_the_handlers_reason(
        self, redis: Redis, redis_server: RedisServer, names: dict[str, str]
    ) -> None:
        """When the first dead-letter write fails and a later claim gives up on the entry, the
        dead letter still names the handler's failure, not only that attempts ran out."""
        stream, group = names["stream"], names["group"]

        @handler(stream=stream, name="payments")
        async def pay(msg: Message) -> None:
            raise ValueError("card declined")

        await redis.set(stream + ":dlq", "not a stream")  # every dead-letter write fails
        await redis.xadd(stream, {"n": "1"})
        with capture_logs() as logs:
            async with running(make_settings(redis_server.url, group, max_attempts=1), [pay]):
                await eventually(lambda: any(e["event"] == "dead_letter.failed" for e in logs))
                await redis.delete(stream + ":dlq")
                await eventually(lambda: _nothing_pending_and_dead(redis, stream, group))
        [letter] = await dead_letters(redis, stream)
        assert letter["dlq_error_type"] == "ValueError"
        assert letter["dlq_error"] == "card declined"
        assert letter["dlq_handler"] == "payments"
        assert "ValueError: card declined" in letter["dlq_traceback"]


async def _nothing_pending_and_dead(redis: Redis, stream: str, group: str) -> bool:
    return await _nothing_pending(redis, stream, group) and await redis.xlen(stream + ":dlq") == 1
