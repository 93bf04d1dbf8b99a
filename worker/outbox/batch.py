"""One relay batch: read the oldest rows, append them to their streams, delete them.

At least once, never less: a row is deleted only after Redis accepted its XADD, so a crash
between the two publishes it again, under the same `event_id` (consumers deduplicate on it).
The XADDs of a batch travel in one pipelined round trip; the DELETE is one statement. A
batch holds whole transactions (`select_sql`), so it may exceed the batch size by the rest
of its last transactions.

If Redis refuses an XADD (say, the stream name holds a key of another type), the rows before
it are deleted and the batch stops there: the refused row and those after it stay, and are
tried again after a back-off (a transaction's rows are then split around the refusal). Rows
after a refused one that Redis did accept are then published twice; consumers see the same
`event_id` again. The relay never skips a row, so a row Redis keeps refusing holds up the
outbox until someone fixes or deletes it (the lag and error metrics show it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

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


def select_sql(table: str) -> str:
    """The batch query: whole transactions, those whose rows all lie at or below a cut-off id
    (by default the id of the `limit`-th row), each one's rows together and in id order, the
    transactions in the order of their last row's id.

    Ids are taken at INSERT, so concurrent transactions interleave theirs; publishing in plain
    id order would interleave their events in the stream, and a LIMIT could cut a transaction
    in two with another one's rows in between. Why the last row's id orders transactions: of
    two transactions of one key, the later takes the key's lock after the earlier committed,
    so its rows of that key, and so its last row, come after every row of the earlier one
    (whatever either wrote before taking the lock). For the same reason, a transaction whose
    last row is below the cut-off has every earlier transaction of its keys below it too, and
    both visible (one statement, one snapshot), so they go out in the same batch, in order.
    Rows without a txid (written before the column existed) stand alone.

    "No row of the transaction beyond the cut" is a scalar subquery with LIMIT 1, not NOT
    EXISTS: PostgreSQL turns the latter into an anti-join that hashes the whole table (50 ms
    per batch with 20,000 rows waiting); the subquery is one probe of the (txid, id) index
    per row.
    """
    t = check_table(table)
    return (
        "WITH cut AS (SELECT greatest(%s::bigint, max(id)) AS id, count(*) AS head "
        f"FROM (SELECT id FROM {t} ORDER BY id LIMIT %s) head), "
        "picked AS (SELECT o.id, o.stream, o.type, o.key, o.data::text AS data, o.event_id, "
        "o.version, cut.head, max(o.id) OVER (PARTITION BY o.txid, "
        "CASE WHEN o.txid IS NULL THEN o.id END) AS last "
        f"FROM {t} o, cut WHERE o.id <= cut.id AND "
        f"(SELECT x.id FROM {t} x WHERE x.txid = o.txid AND x.id > cut.id LIMIT 1) IS NULL) "
        "SELECT id, stream, type, key, data, event_id, version, head FROM picked "
        "ORDER BY last, id"
    )


async def read_rows(conn: AsyncConnection[Any], table: str, limit: int) -> tuple[list[Row], bool]:
    """About `limit` committed rows: whole transactions, in order (`select_sql`); and whether
    more rows may be waiting (the first `limit` rows were not all the table held).

    When no transaction lies wholly within the first `limit` rows (one has more rows than
    that, or straddles the cut with others), the cut moves to the last row of the oldest
    row's transaction, so that the batch holds at least that one.
    """
    query = select_sql(table)
    cursor = await conn.execute(query, (None, limit))
    records = await cursor.fetchall()
    if records:
        return [Row(*r[:7]) for r in records], int(records[0][7]) >= limit
    cursor = await conn.execute(
        f"SELECT max(id) FROM {check_table(table)} WHERE txid = "
        f"(SELECT txid FROM {table} ORDER BY id LIMIT 1)"
    )
    found = await cursor.fetchone()
    if found is None or found[0] is None:
        return [], False
    cursor = await conn.execute(query, (found[0], limit))
    return [Row(*r[:7]) for r in await cursor.fetchall()], True


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


class Turn(NamedTuple):
    """What one batch did."""

    published: int
    """Rows published and deleted."""
    refused: PublishRefused | None
    """Redis's refusal of one XADD, if any; the rows from it on stay."""
    more: bool
    """More rows may be waiting: go again without waiting for a notification."""


async def relay_once(conn: AsyncConnection[Any], redis: Redis, table: str, limit: int) -> Turn:
    """Relay one batch.

    Raises:
        psycopg.Error: PostgreSQL failed (rows published but not deleted go out again).
        redis.exceptions.ConnectionError, TimeoutError, OSError: Redis did not answer.
    """
    rows, more = await read_rows(conn, table, limit)
    if not rows:
        return Turn(0, None, more)
    accepted, refused = await publish_rows(redis, rows)
    if accepted:
        await delete_rows(conn, table, accepted)
    return Turn(len(accepted), refused, more)
