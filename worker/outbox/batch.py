"""One relay batch: read the oldest rows, append them to their streams, delete them.

At least once, never less: a row is deleted only after Redis accepted its XADD, so a crash
between the two publishes it again, under the same `event_id` (consumers deduplicate on it).
The XADDs of a batch travel in one pipelined round trip; the DELETE is one statement.

If Redis refuses an XADD (say, the stream name holds a key of another type), the rows before
it are deleted and the batch stops there: the refused row and those after it stay, and are
tried again after a back-off. Rows after a refused one that Redis did accept are then
published twice; consumers see the same `event_id` again. The relay never skips a row, so a
row Redis keeps refusing holds up the outbox until someone fixes or deletes it (the lag and
error metrics show it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from worker.outbox.schema import check_table

if TYPE_CHECKING:
    from psycopg import AsyncConnection


class PublishRefused(Exception):
    """Redis refused one XADD of a batch; the rows from it on stay in the outbox."""

    def __init__(self, row_id: int, stream: str, cause: BaseException) -> None:
        super().__init__(f"row {row_id} (stream {stream}): {type(cause).__name__}: {cause}")
        self.row_id = row_id
        self.stream = stream
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    stream: str
    type: str
    key: str | None
    data: str
    event_id: str
    version: int | None

    def fields(self) -> dict[str, str]:
        """The entry's fields, in the convention of `worker.publish.event_fields` (whose
        `data` is already JSON text here, so it is not encoded again)."""
        fields = {"type": self.type}
        if self.key is not None:
            fields["key"] = self.key
        fields["data"] = self.data
        fields["event_id"] = self.event_id
        if self.version is not None:
            fields["version"] = str(self.version)
        return fields


async def read_rows(conn: AsyncConnection[Any], table: str, limit: int) -> list[Row]:
    """The `limit` committed rows of lowest id."""
    cursor = await conn.execute(
        f"SELECT id, stream, type, key, data::text, event_id, version FROM {check_table(table)} "
        "ORDER BY id LIMIT %s",
        (limit,),
    )
    return [Row(*record) for record in await cursor.fetchall()]


async def publish_rows(redis: Redis, rows: list[Row]) -> tuple[list[int], PublishRefused | None]:
    """XADD every row in one pipeline; the ids accepted before the first refusal, and it.

    Raises:
        redis.exceptions.ConnectionError, TimeoutError, OSError: Redis did not answer; some
            entries may have been appended (they will be again: at least once).
    """
    async with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xadd(row.stream, row.fields())  # type: ignore[arg-type]  # invariant typing
        results = await pipe.execute(raise_on_error=False)
    accepted: list[int] = []
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, BaseException):
            return accepted, PublishRefused(row.id, row.stream, result)
        accepted.append(row.id)
    return accepted, None


async def delete_rows(conn: AsyncConnection[Any], table: str, ids: list[int]) -> None:
    await conn.execute(f"DELETE FROM {check_table(table)} WHERE id = ANY(%s)", (ids,))


async def relay_once(
    conn: AsyncConnection[Any], redis: Redis, table: str, limit: int
) -> tuple[int, PublishRefused | None]:
    """Relay one batch; the number of rows published and deleted, and a refusal if any.

    Raises:
        psycopg.Error: PostgreSQL failed (rows published but not deleted go out again).
        redis.exceptions.ConnectionError, TimeoutError, OSError: Redis did not answer.
    """
    rows = await read_rows(conn, table, limit)
    if not rows:
        return 0, None
    accepted, refused = await publish_rows(redis, rows)
    if accepted:
        await delete_rows(conn, table, accepted)
    return len(accepted), refused
