"""Adding an event to the outbox inside the caller's own transaction.

The row commits or rolls back with the business change it describes: that is the whole point
of an outbox. `add` therefore never commits; it runs one INSERT on the connection it is given.

Other languages and tools write the same row with plain SQL (the trigger wakes the relay):

    INSERT INTO syncworker_outbox (stream, type, key, data, event_id, version)
    VALUES ('orders', 'order.created', 'order-42', '{"total": "19.90"}', DEFAULT, 3);

`data` is JSON text; `event_id` defaults to a random UUID, `key` and `version` may be NULL.

Order: events of one key reach the stream in the order of their rows' ids. Take the entity's
lock (SELECT ... FOR UPDATE, or the UPDATE that bumps its version) *before* adding its events,
as anything that assigns versions must anyway; then a later transaction of the key inserts,
and so numbers, its rows after the earlier one committed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast, overload

from worker.outbox.schema import TABLE, check_table

if TYPE_CHECKING:
    from psycopg import AsyncConnection, Connection
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session


def insert_sql(table: str = TABLE) -> str:
    """The INSERT that `add` runs, with placeholders for stream, type, key, data, event_id,
    version."""
    return (
        f"INSERT INTO {check_table(table)} (stream, type, key, data, event_id, version) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    )


@overload
def add(
    conn: AsyncConnection[Any] | AsyncSession | SAAsyncConnection,
    stream: str,
    type: str,
    data: Any = None,
    *,
    key: str | None = None,
    version: int | None = None,
    event_id: str | None = None,
    table: str = TABLE,
) -> Awaitable[str]: ...


@overload
def add(
    conn: Connection[Any] | Session | SAConnection,
    stream: str,
    type: str,
    data: Any = None,
    *,
    key: str | None = None,
    version: int | None = None,
    event_id: str | None = None,
    table: str = TABLE,
) -> str: ...


def add(
    conn: Connection[Any]
    | AsyncConnection[Any]
    | Session
    | SAConnection
    | AsyncSession
    | SAAsyncConnection,
    stream: str,
    type: str,
    data: Any = None,
    *,
    key: str | None = None,
    version: int | None = None,
    event_id: str | None = None,
    table: str = TABLE,
) -> str | Awaitable[str]:
    """Write one event row in the connection's current transaction; return its event id.

    With a `psycopg.AsyncConnection`, returns an awaitable: `await outbox.add(aconn, ...)`.
    A SQLAlchemy `Session`, `Connection`, `AsyncSession` or `AsyncConnection` is handed to
    `worker.outbox.sqlalchemy.add`, which writes the same row through it.
    Call it inside the transaction that makes the change the event describes; it commits
    (and is published) only if that transaction commits.

    Args:
        conn: a psycopg 3 connection, sync or async, or a SQLAlchemy session or connection,
            in the caller's transaction.
        stream: the Redis stream the relay appends the event to.
        type: the event type (`type` field).
        data: anything `json.dumps` takes (`data` field, as JSON).
        key: the entity key (`key` field); events of one key are published in order.
        version: the entity version (`version` field), an integer.
        event_id: the event's unique id; a random UUID when None. Consumers deduplicate on
            it, which absorbs the relay's at-least-once duplicates.
        table: the outbox table.

    Raises:
        TypeError: `data` cannot be serialised to JSON.
    """
    from worker.outbox import sqlalchemy as sa_outbox

    if sa_outbox.is_sqlalchemy(conn):
        return sa_outbox.add(
            conn,  # type: ignore[arg-type]
            stream,
            type,
            data,
            key=key,
            version=version,
            event_id=event_id,
            table=table,
        )
    event_id = event_id or str(uuid.uuid4())
    params = (
        stream,
        type,
        key,
        json.dumps(data, separators=(",", ":")),
        event_id,
        None if version is None else int(version),
    )
    query = insert_sql(table)
    from psycopg import AsyncConnection

    conn = cast("Connection[Any] | AsyncConnection[Any]", conn)
    if isinstance(conn, AsyncConnection):
        return _add_async(conn, query, params, event_id)
    conn.execute(query, params)
    return event_id


async def _add_async(
    conn: AsyncConnection[Any], query: str, params: tuple[Any, ...], event_id: str
) -> str:
    await conn.execute(query, params)
    return event_id
