"""`outbox.add` through SQLAlchemy: the row commits and rolls back with the caller's session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.outbox.helpers import entries, relaying
from worker import outbox
from worker.outbox import sqlalchemy as sa_outbox

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def engine(outbox_dsn: str) -> Iterator[Any]:
    import psycopg
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(outbox_dsn))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
async def async_engine(outbox_dsn: str) -> AsyncIterator[Any]:
    import psycopg
    from sqlalchemy.ext.asyncio import create_async_engine

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(outbox_dsn)

    engine = create_async_engine("postgresql+psycopg://", async_creator=connect)
    try:
        yield engine
    finally:
        await engine.dispose()


async def published(redis: Redis, stream: str, n: int) -> list[dict[str, str]]:
    """The stream's entries once it holds `n`, after a pause in which more could arrive."""
    await eventually(lambda: _at_least(redis, stream, n), timeout=5)
    await asyncio.sleep(0.3)  # longer than a relay batch: anything rolled back would show
    return await entries(redis, stream)


async def _at_least(redis: Redis, stream: str, n: int) -> bool:
    return bool(await redis.xlen(stream) >= n)


class TestSyncSession:
    async def test_commit_publishes_and_rollback_never(
        self, redis: Redis, outbox_dsn: str, table: str, names: dict[str, str], engine: Any
    ) -> None:
        """Events added through a Session reach the stream when it commits, never when it
        rolls back."""
        from sqlalchemy.orm import Session

        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table):
            with Session(engine) as session:
                outbox.add(session, stream, "order.created", {"n": 1}, key="lost", table=table)
                session.rollback()
            with Session(engine) as session, session.begin():
                event_id = outbox.add(
                    session, stream, "order.created", {"n": 2}, key="kept", version=4, table=table
                )
            got = await published(redis, stream, 1)
        assert [(e["key"], e["data"], e["event_id"], e["version"]) for e in got] == [
            ("kept", '{"n":2}', event_id, "4")
        ]

    async def test_connection(
        self, redis: Redis, outbox_dsn: str, table: str, names: dict[str, str], engine: Any
    ) -> None:
        """A Core Connection works the same way: its transaction decides."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table):
            with engine.connect() as conn:
                sa_outbox.add(conn, stream, "t", {"n": 1}, key="lost", table=table)
                conn.rollback()
                sa_outbox.add(conn, stream, "t", {"n": 2}, key="kept", table=table)
                conn.commit()
            got = await published(redis, stream, 1)
        assert [e["key"] for e in got] == ["kept"]


class TestAsyncSession:
    async def test_commit_publishes_and_rollback_never(
        self, redis: Redis, outbox_dsn: str, table: str, names: dict[str, str], async_engine: Any
    ) -> None:
        """An AsyncSession: `await outbox.add(...)`, published only once committed."""
        from sqlalchemy.ext.asyncio import AsyncSession

        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table):
            async with AsyncSession(async_engine) as session:
                await outbox.add(session, stream, "t", {"n": 1}, key="lost", table=table)
                await session.rollback()
            async with AsyncSession(async_engine) as session, session.begin():
                await outbox.add(session, stream, "t", {"n": 2}, key="kept", table=table)
            got = await published(redis, stream, 1)
        assert [(e["key"], e["data"]) for e in got] == [("kept", '{"n":2}')]

    async def test_async_connection(
        self, redis: Redis, outbox_dsn: str, table: str, names: dict[str, str], async_engine: Any
    ) -> None:
        """An AsyncConnection: rolled-back rows are never relayed, committed ones are."""
        stream = names["stream"]
        async with relaying(redis, outbox_dsn, table):
            async with async_engine.connect() as conn:
                await outbox.add(conn, stream, "t", None, key="lost", table=table)
                await conn.rollback()
                await outbox.add(conn, stream, "t", None, key="kept", table=table)
                await conn.commit()
            got = await published(redis, stream, 1)
        assert [(e["key"], e["data"]) for e in got] == [("kept", "null")]


def test_refuses_what_is_not_sqlalchemy() -> None:
    """Anything but a SQLAlchemy session or connection is refused before any SQL is built."""
    with pytest.raises(TypeError, match="SQLAlchemy"):
        sa_outbox.add(object(), "s", "t")  # type: ignore[arg-type]
