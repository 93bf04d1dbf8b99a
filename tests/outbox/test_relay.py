"""The relay in the test's event loop: what is published, in which order, and its metrics."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import defaultdict
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.outbox.helpers import entries, relaying
from worker import Message
from worker.outbox import add
from worker.outbox.relay import APPLICATION_NAME
from worker.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


async def connect(dsn: str) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(dsn)


async def table_empty(pg: Any, table: str) -> bool:
    return bool(pg.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,))


class TestWhatIsPublished:
    async def test_rolled_back_rows_never_published(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """Rows of a rolled-back transaction never reach the stream; committed ones do."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table):
            async with await connect(outbox_dsn) as conn:
                await add(conn, stream, "order.created", {"n": 1}, key="lost", table=table)
                await add(conn, stream, "order.paid", {"n": 1}, key="lost", table=table)
                await conn.rollback()
                await add(conn, stream, "order.created", {"n": 2}, key="kept", table=table)
                await conn.commit()
            await eventually(lambda: redis.xlen(stream), timeout=5)
            await asyncio.sleep(0.3)  # a second batch, if there were anything left
            got = await entries(redis, stream)
        assert [e["key"] for e in got] == ["kept"]

    async def test_one_transaction_published_together_in_order(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """The rows of one transaction appear together, in the order they were added, each
        in the event convention a worker's Message decodes."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table, batch_size=7):
            async with await connect(outbox_dsn) as conn:
                ids = [
                    await add(conn, stream, "step", {"i": i}, key="k", version=i, table=table)
                    for i in range(20)
                ]
                await asyncio.sleep(0.6)  # longer than a poll: nothing may leak out early
                assert await redis.xlen(stream) == 0
                await conn.commit()
            await eventually(lambda: table_empty(pg, table), timeout=5)
        raw = await redis.xrange(stream)
        messages = [Message(stream, i.decode(), f) for i, f in raw]
        assert [m.event_id for m in messages] == ids
        assert [(m.type, m.key, m.version, m.data) for m in messages] == [
            ("step", "k", i, {"i": i}) for i in range(20)
        ]

    async def test_interleaved_transactions_stay_contiguous(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """Two transactions that took their ids in turns still appear one after the other,
        each in its own order, even with a batch size that cuts through both."""
        stream = names["stream"]
        async with await connect(outbox_dsn) as a, await connect(outbox_dsn) as b:
            for i in range(6):  # ids a0 b0 a1 b1 ...
                await add(a, stream, "t", f"a{i}", key="a", table=table)
                await add(b, stream, "t", f"b{i}", key="b", table=table)
            await a.commit()
            await b.commit()
        async with relaying(redis, outbox_dsn, table, batch_size=5):
            await eventually(lambda: table_empty(pg, table), timeout=5)
        got = [json.loads(e["data"]) for e in await entries(redis, stream)]
        assert got == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]

    async def test_rows_written_before_the_txid_column_are_published(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """A table made before the txid column gets it from `migrate`; its old rows (no
        txid) go out one by one, in id order, before newer ones."""
        import psycopg

        from worker.outbox import migrate

        stream = names["stream"]
        pg.execute(f"DROP INDEX {table}_txid")
        pg.execute(f"ALTER TABLE {table} DROP COLUMN txid")
        for i in range(3):
            pg.execute(
                f"INSERT INTO {table} (stream, type, data) VALUES (%s, 't', %s::json)",
                (stream, str(i)),
            )
        with psycopg.connect(outbox_dsn) as conn:
            migrate(conn, table)
        pg.execute(f"INSERT INTO {table} (stream, type, data) VALUES (%s, 't', '3')", (stream,))
        assert pg.execute(f"SELECT count(txid) FROM {table}").fetchone() == (1,)
        async with relaying(redis, outbox_dsn, table, batch_size=2):
            await eventually(lambda: table_empty(pg, table), timeout=5)
        assert [json.loads(e["data"]) for e in await entries(redis, stream)] == [0, 1, 2, 3]

    async def test_later_commit_with_smaller_id_still_published(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """A transaction that commits after rows with larger ids went out is published too:
        the relay keeps no cursor that could pass it by."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table):
            async with await connect(outbox_dsn) as slow, await connect(outbox_dsn) as fast:
                await add(slow, stream, "t", "slow", key="a", table=table)  # smaller id
                await add(fast, stream, "t", "fast", key="b", table=table)
                await fast.commit()
                await eventually(lambda: redis.xlen(stream), timeout=5)
                await slow.commit()
            await eventually(lambda: table_empty(pg, table), timeout=5)
        assert [json.loads(e["data"]) for e in await entries(redis, stream)] == ["fast", "slow"]

    async def test_per_key_order_across_concurrent_writers(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """Concurrent transactions that lock their key before adding its event publish each
        key's versions in order, and all of them."""
        stream, keys = names["stream"], [f"k{i}" for i in range(4)]
        pg.execute(f"CREATE TABLE agg_{table} (key text PRIMARY KEY, version bigint NOT NULL)")
        pg.execute(f"INSERT INTO agg_{table} SELECT unnest(%s::text[]), 0", (keys,))

        async def writer(seed: int) -> None:
            rnd = random.Random(seed)
            async with await connect(outbox_dsn) as conn:
                for _ in range(25):
                    key = rnd.choice(keys)
                    if rnd.random() < 0.5:  # another key's event first, without its lock
                        await add(conn, stream, "noise", None, table=table)
                    cursor = await conn.execute(
                        f"UPDATE agg_{table} SET version = version + 1 WHERE key = %s "
                        "RETURNING version",
                        (key,),
                    )
                    (version,) = await cursor.fetchone()  # type: ignore[misc]
                    await add(conn, stream, "bump", None, key=key, version=version, table=table)
                    await asyncio.sleep(rnd.random() * 0.004)
                    if rnd.random() < 0.2:
                        await conn.rollback()
                    else:
                        await conn.commit()

        async with relaying(redis, outbox_dsn, table, batch_size=16):
            await asyncio.gather(*(writer(seed) for seed in range(6)))
            await eventually(lambda: table_empty(pg, table), timeout=5)
        seen: dict[str, list[int]] = defaultdict(list)
        for e in await entries(redis, stream):
            if e["type"] == "bump":
                seen[e["key"]].append(int(e["version"]))
        final = dict(pg.execute(f"SELECT key, version FROM agg_{table}").fetchall())
        for key in keys:
            assert seen[key] == list(range(1, final[key] + 1)), key


class TestMetrics:
    async def test_pending_lag_published(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """Pending rows and lag show a backlog while Redis refuses it; the errors and then
        the published rows are counted, and nothing is lost."""
        stream = names["stream"]
        await redis.set(stream, "not a stream")  # every XADD to it fails with WRONGTYPE
        for i in range(3):
            pg.execute(
                f"INSERT INTO {table} (stream, type, data) VALUES (%s, 't', %s::json)",
                (stream, str(i)),
            )
        async with relaying(redis, outbox_dsn, table) as relay:
            await eventually(lambda: relay.stats.publish_errors >= 2, timeout=5)
            await eventually(lambda: relay.stats.pending_rows == 3, timeout=5)
            assert relay.stats.lag_seconds is not None and relay.stats.lag_seconds > 0
            assert relay.stats.published == 0 and relay.stats.leader
            await redis.delete(stream)
            await eventually(lambda: relay.stats.published == 3, timeout=10)
            await eventually(lambda: relay.stats.pending_rows == 0, timeout=5)
            assert relay.stats.lag_seconds == 0
        assert await redis.xlen(stream) == 3


class TestFailures:
    async def test_lost_database_session_reconnects(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """A leader whose PostgreSQL session is ended reconnects, leads again, and relays."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table) as relay:
            await eventually(lambda: relay.stats.leader, timeout=5)
            # When PostgreSQL ends the leader's session (a restart, an admin, a failover)
            ended = pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchall()
            assert ended == [(True,)]
            pg.execute(f"INSERT INTO {table} (stream, type) VALUES (%s, 't')", (stream,))
            # Then it counts the failure, and the row still goes out
            await eventually(lambda: relay.stats.database_errors >= 1, timeout=5)
            await eventually(lambda: redis.xlen(stream), timeout=10)
            assert relay.stats.leader

    async def test_redis_outage_holds_rows_until_it_returns(
        self, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """Rows committed while Redis is down stay in the outbox and go out once it is back."""
        stream = names["stream"]
        server = RedisServer().start()
        client = Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            async with relaying(client, outbox_dsn, table) as relay:
                await eventually(lambda: relay.stats.leader, timeout=5)
                server.stop(signal.SIGKILL)
                pg.execute(f"INSERT INTO {table} (stream, type) VALUES (%s, 't')", (stream,))
                await eventually(lambda: relay.stats.publish_errors >= 1, timeout=5)
                assert not await table_empty(pg, table)
                server.start()
                await eventually(lambda: relay.stats.published == 1, timeout=10)
            assert await client.xlen(stream) == 1
        finally:
            await client.aclose()
            server.cleanup()


class TestLeadership:
    async def test_one_leader_and_a_graceful_handover(
        self, redis: Redis, outbox_dsn: str, pg: Any, table: str, names: dict[str, str]
    ) -> None:
        """Of two relays exactly one leads; when it stops, the other leads and publishes."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table) as first:
            await eventually(lambda: first.stats.leader, timeout=5)
            async with relaying(redis, outbox_dsn, table) as second:
                await eventually(lambda: second.stats.pending_rows is not None, timeout=5)
                assert (first.stats.leader, second.stats.leader) == (True, False)
                first.stop()
                await eventually(lambda: second.stats.leader, timeout=5)
                pg.execute(f"INSERT INTO {table} (stream, type) VALUES (%s, 't')", (stream,))
                await eventually(lambda: second.stats.published == 1, timeout=5)
        assert first.stats.published == 0
