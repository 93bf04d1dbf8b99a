"""Adding an outbox event through SQLAlchemy, inside the caller's session or connection.

Services built on SQLAlchemy hold a `Session` (or a `Connection`), not a psycopg connection:
this writes the same row as `worker.outbox.add`, through whatever the caller holds, so that it
commits or rolls back with the session's own changes. Needs the `sqlalchemy` extra
(`pip install 'syncworker[sqlalchemy]'`) and a PostgreSQL engine (any driver: psycopg,
asyncpg, psycopg2).

    with Session(engine) as session, session.begin():
        session.add(order)
        session.flush()                       # the UPDATE/INSERT that takes the row lock
        outbox.add(session, "orders", "order.created", {"total": "19.90"},
                   key=f"order-{order.id}", version=order.version)

    async with AsyncSession(engine) as session, session.begin():
        ...
        await outbox.add(session, "orders", "order.created", {...}, key=...)

`worker.outbox.add` hands SQLAlchemy objects to `add` here, so one name serves both.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeGuard, overload

from worker.outbox.schema import TABLE, check_table

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

    SyncTarget = Session | Connection
    AsyncTarget = AsyncSession | AsyncConnection


def is_sqlalchemy(conn: object) -> bool:
    """True for a SQLAlchemy session or connection, sync or async (subclasses included).

    Imports nothing: an application that never imported SQLAlchemy holds none of its objects.
    """
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    return isinstance(conn, Session | Connection) or _is_async(conn)


def _is_async(conn: object) -> TypeGuard[AsyncTarget]:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    return isinstance(conn, AsyncSession | AsyncConnection)


@overload
def add(
    conn: AsyncTarget,
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
    conn: SyncTarget,
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
    conn: SyncTarget | AsyncTarget,
    stream: str,
    type: str,
    data: Any = None,
    *,
    key: str | None = None,
    version: int | None = None,
    event_id: str | None = None,
    table: str = TABLE,
) -> str | Awaitable[str]:
    """Write one event row in the session's (or connection's) current transaction; return
    its event id.

    With an `AsyncSession` or `AsyncConnection`, returns an awaitable. Never commits: the row
    is published only if the caller's transaction commits. A `Session` or `Connection` with no
    transaction begins one (SQLAlchemy's autobegin), which the caller then commits.

    Args:
        conn: a `sqlalchemy.orm.Session`, `sqlalchemy.engine.Connection`,
            `sqlalchemy.ext.asyncio.AsyncSession` or `AsyncConnection` on PostgreSQL.
        stream: the Redis stream the relay appends the event to.
        type: the event type.
        data: anything `json.dumps` takes.
        key: the entity key; events of one key are published in order.
        version: the entity version, an integer.
        event_id: the event's unique id; a random UUID when None.
        table: the outbox table.

    Raises:
        TypeError: `data` cannot be serialised to JSON, or `conn` is not one of the above.
    """
    from sqlalchemy import text

    event_id = event_id or str(uuid.uuid4())
    statement = text(
        f"INSERT INTO {check_table(table)} (stream, type, key, data, event_id, version) "
        "VALUES (:stream, :type, :key, CAST(:data AS json), :event_id, :version)"
    )
    params = {
        "stream": stream,
        "type": type,
        "key": key,
        "data": json.dumps(data, separators=(",", ":")),
        "event_id": event_id,
        "version": None if version is None else int(version),
    }
    if _is_async(conn):
        return _add_async(conn, statement, params, event_id)
    if not is_sqlalchemy(conn):
        raise TypeError(
            f"expected a SQLAlchemy Session or Connection (sync or async), got {conn!r}"
        )
    conn.execute(statement, params)
    return event_id


async def _add_async(
    conn: AsyncTarget, statement: Any, params: dict[str, Any], event_id: str
) -> str:
    await conn.execute(statement, params)
    return event_id
