"""SQL sink: one PostgreSQL row per entity, upserted from events exactly once.

Needs the `postgres` extra: `pip install 'syncworker[postgres]'` (psycopg 3 and psycopg_pool).

Each event upserts the row of its entity (key column = the event's key) with the configured
column mapping, in ONE transaction (a single statement, so one round trip) with:

1. an inbox row keyed by (group, stream, message id, target table), `INSERT ... ON CONFLICT
   DO NOTHING` (the table is part of the key so that two sinks may share one inbox; for a
   replayed dead letter, stream and id are those of the entry it copies, `Message.origin`,
   so a replay of an applied entry is a duplicate). If the row is already there, this
   delivery is a redelivery of a message whose effect has committed: nothing else is
   written and the handler returns, so the runtime acks;
2. the upsert, only when the inbox row is new, guarded by the version column: `ON CONFLICT
   (key) DO UPDATE ... WHERE row.version < new.version`, so duplicates and late, older
   events change nothing (counted as `stale`).

Why exactly once without the ack in the transaction. The acknowledgement lives in Redis and
the effect in PostgreSQL; no transaction spans both. So the order is: commit, then ack (the
runtime acks once `handle` returns). A crash before the commit rolls the whole transaction
back, inbox row included, and the redelivery applies it. A crash between the commit and the
ack leaves the message pending; its redelivery finds the inbox row, changes nothing and is
acked. Two consumers running the same message at once (a takeover) serialise on the inbox
primary key: the second waits for the first to commit and then finds its row. Either way the
effect lands once. The inbox grows by one row per message; delete rows older than the longest
time a message can stay pending (e.g. a day) with a periodic
`DELETE FROM syncworker_inbox WHERE handled_at < now() - interval '1 day'`.

Versions are integers compared by PostgreSQL, exactly at any size; the version column's type
bounds them (bigint: up to 2^63 - 1; numeric: any). An event whose version (or any value) the
column cannot hold, a data exception in PostgreSQL's terms (SQLSTATE class 22, e.g. "value out
of range for type bigint"), raises `Reject` with PostgreSQL's reason: it is dead-lettered at
once, since retrying the same event cannot change the answer.

Failures. A connection that cannot be had within `connect_timeout`, or that breaks mid-way,
raises; the runtime retries the message with backoff like any handler failure. A pooled
connection that PostgreSQL dropped (a restart) fails the first statement sent on it; the pool
then discards it and the retry gets a fresh one. (Checking each connection before use would
catch that one failure earlier, but costs a round trip on every message.) Pool: psycopg_pool's
AsyncConnectionPool, `pool_size` connections at most (4 by default). The worker runs up to
`concurrency` messages at once; one shared connection would serialise all of them behind one
lock and one round trip at a time, while a few pooled connections let independent entities
commit in parallel, and the pool already knows how to discard and reopen connections.

Batches. `SqlSink(...)` is a batch handler unless `batch=False`: a batch commits as one
transaction, so one commit (and one round trip) per batch instead of per event. When every
event of the batch writes the same columns, one statement does it all (`handlers._sql_set`):
it inserts the inbox rows and upserts, per row, the newest of the events whose inbox row is
new, which is what applying them one by one leaves. Otherwise each event's statement above
runs, pipelined. A data exception in any event rolls the batch back; it then runs again with
a savepoint around each event, so that only the offending events are rejected.

Deletes are not offered on purpose: a deleted row forgets its version, so a late older event
would bring it back. Use a status column (`values = { "order.cancelled" = { status =
"cancelled" } }`) instead.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from handlers._fields import FieldMap, data_object, entity_key, field_map, pick
from handlers._sql_set import set_statement
from worker import HandlerContext, MalformedMessage, Message, Reject
from worker.batch import BatchHandler, Outcome
from worker.handler import Handler

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger("handlers.sql")

DSN_ENV = "SYNCWORKER_POSTGRES_DSN"
"""Environment variable the DSN is read from when the `dsn` option is absent."""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")

_LOCK_ID = 0x5157_0001
"""Advisory lock serialising schema creation across replicas that start together."""


def identifier(option: str, name: str) -> str:
    """A table or column name, checked here and quoted by psycopg later.

    Raises:
        ValueError: not a plain (optionally schema-qualified) SQL identifier.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{option} must be a plain SQL identifier, not {name!r}")
    return name


class SqlSink(Handler):
    """Upserts one PostgreSQL row per entity; see the module docstring.

    Args:
        table: the target table (optionally `schema.table`).
        columns: column -> field of `data` (a table), or a list of names used for both.
        key_column: the primary-key (or unique) column that holds the entity key.
        version_column: the column holding the entity version, compared with the event's
            `version`; None disables the guard (last delivery wins).
        values: event type -> {column = constant}, written beside the mapped columns.
        key_field: take the entity key from `data[key_field]` instead of the `key` field.
        dsn: libpq connection string or URL; default: the SYNCWORKER_POSTGRES_DSN variable.
        inbox_table: the inbox, created if missing.
        schema: SQL run once at start-up (e.g. `CREATE TABLE IF NOT EXISTS ...`), under an
            advisory lock so that replicas starting together do not race.
        pool_size: most connections this handler opens.
        connect_timeout: seconds to wait for a connection before the attempt fails.
        batch: True (the default) builds a batch handler, which writes up to `batch_max`
            messages in one round trip but must be alone on its stream; False handles one
            message at a time and may share the stream (with `ack = false`).
        batch_max: most messages per batch.
        batch_wait: seconds a batch may wait for more messages (see `worker.batch`).

    Raises:
        ValueError: invalid options, or no DSN at all.
    """

    name = "sql"

    def __new__(cls, *args: Any, batch: bool = True, **options: Any) -> SqlSink:
        # `copy.copy` (Handler.bind) calls __new__ without options: it keeps the class.
        if batch and options and cls is SqlSink:
            cls = BatchSqlSink
        return super().__new__(cls)

    def __init__(
        self,
        *,
        batch: bool = True,
        batch_max: int = 100,
        batch_wait: float = 0.002,
        table: str,
        columns: Mapping[str, str] | Sequence[str],
        key_column: str = "id",
        version_column: str | None = "version",
        values: Mapping[str, Mapping[str, Any]] | None = None,
        key_field: str | None = None,
        dsn: str | None = None,
        inbox_table: str = "syncworker_inbox",
        schema: str | None = None,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if batch_wait < 0:
            raise ValueError("batch_wait must be >= 0 seconds")
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.dsn = dsn or os.environ.get(DSN_ENV, "")
        if not self.dsn:
            raise ValueError(f"no dsn option and {DSN_ENV} is not set")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.table = identifier("table", table)
        self.key_column = identifier("key_column", key_column)
        self.version_column = (
            identifier("version_column", version_column) if version_column else None
        )
        mapping = field_map("columns", columns)
        if not mapping:
            raise ValueError("columns must map at least one column")
        self.columns: FieldMap = {identifier("columns", c): f for c, f in mapping.items()}
        reserved = {self.key_column, self.version_column or self.key_column} & set(self.columns)
        if reserved:
            raise ValueError(f"columns must not map the key or version column: {sorted(reserved)}")
        self.values = {
            str(t): {identifier(f"values.{t}", c): v for c, v in dict(cols).items()}
            for t, cols in (values or {}).items()
        }
        self.key_field = key_field
        self.inbox_table = identifier("inbox_table", inbox_table)
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.counts: Counter[str] = Counter()
        self._pool: AsyncConnectionPool[Any] | None = None
        self._ready = False
        self._statements: dict[tuple[str, ...], bytes] = {}
        self._sets: dict[bytes, bytes] = {}
        """Per-event statement -> the statement for a batch of such events."""

    # Lifecycle --------------------------------------------------------------------------

    async def on_startup(self, ctx: HandlerContext) -> None:
        await self.open()

    async def open(self) -> None:
        """Open the connection pool without waiting for PostgreSQL (`on_startup` calls it)."""
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError:
            raise RuntimeError(
                "the sql handler needs the postgres extra: pip install 'syncworker[postgres]'"
            ) from None
        self._pool = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            timeout=self.connect_timeout,
            kwargs={"connect_timeout": max(int(self.connect_timeout), 1), "autocommit": True},
            name=f"syncworker-sql-{self.table}",
            open=False,
        )
        # Not waiting: PostgreSQL being down at start-up must not stop the Redis handlers;
        # messages for this one fail and are retried until it answers.
        await self._pool.open(wait=False)

    async def on_shutdown(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _prepare(self, conn: AsyncConnection[Any]) -> None:
        from psycopg import sql

        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " consumer_group text NOT NULL, stream text NOT NULL,"
                    " message_id text NOT NULL, sink text NOT NULL,"
                    " handled_at timestamptz NOT NULL DEFAULT now(),"
                    " PRIMARY KEY (consumer_group, stream, message_id, sink))"
                ).format(_name(self.inbox_table))
            )
            if self.schema:
                await conn.execute(self.schema.encode())
        self._ready = True
        log.info("sql.ready", table=self.table, inbox_table=self.inbox_table)

    # Messages ---------------------------------------------------------------------------

    async def handle(self, msg: Message) -> None:
        """One message as a batch of one; raises its outcome unless it succeeded."""
        (outcome,) = await self.handle_batch([msg])
        if outcome is not None:
            raise outcome

    async def handle_batch(self, msgs: list[Message]) -> list[Outcome]:
        """Apply `msgs` in ONE transaction, their statements pipelined in one round trip.

        A data exception (one event's value its column cannot hold) aborts the transaction;
        the batch then runs again with a savepoint around each event, so that only the
        offending events are rejected, with PostgreSQL's reason.

        Returns:
            Per message: None (applied, stale or duplicate: committed before the runtime
            acknowledges it), or `Reject` / `MalformedMessage` (dead-lettered).
        """
        outcomes: list[Outcome] = [None] * len(msgs)
        work: list[tuple[int, bytes, list[Any]]] = []
        for i, msg in enumerate(msgs):
            try:
                work.append((i, *self._statement(msg)))
            except MalformedMessage as exc:
                outcomes[i] = exc
        if not work:
            return outcomes
        from psycopg.errors import DataError

        assert self._pool is not None, "on_startup was not called"
        async with self._pool.connection() as conn:
            if not self._ready:
                await self._prepare(conn)
            results: list[str | BaseException]
            statements = {statement for _, statement, _ in work}
            origins = {(params[1], params[2]) for _, _, params in work}
            try:
                if len(work) > 1 and len(statements) == 1 and len(origins) == len(work):
                    results = list(await self._apply_set(conn, work))
                else:
                    results = list(await self._apply_all(conn, work))
            except DataError:
                results = await self._apply_each(conn, work)
        for (i, _, _), result in zip(work, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[i] = result
            else:
                self.counts[result] += 1
        return outcomes

    def _statement(self, msg: Message) -> tuple[bytes, list[Any]]:
        """The statement for `msg` and its parameters.

        Raises:
            MalformedMessage: no entity key, `data` not an object, or a non-integer version.
        """
        from psycopg.types.json import Jsonb

        key = entity_key(msg, self.key_field)
        version = msg.version
        row = pick(data_object(msg), self.columns)
        row.update(self.values.get(msg.type or "", {}))
        versioned = version is not None and self.version_column is not None
        record = {self.key_column: key, **row}
        if versioned:
            record[self.version_column or ""] = version
        statement = self._sql(tuple(record), versioned)
        return statement, [msg.group, *msg.origin, self.table, Jsonb(record)]

    async def _apply_all(
        self, conn: AsyncConnection[Any], work: list[tuple[int, bytes, list[Any]]]
    ) -> list[str]:
        """Every statement and the commit in one pipeline: one round trip for the batch.

        Raises:
            DataError: an event's value does not fit its column; nothing was committed.
        """
        runs: list[tuple[bytes, list[list[Any]]]] = []
        for _, statement, params in work:
            if runs and runs[-1][0] is statement:
                runs[-1][1].append(params)
            else:
                runs.append((statement, [params]))
        outcomes: list[str] = []
        async with conn.pipeline(), conn.transaction(), conn.cursor() as cursor:
            # One executemany per run of events with the same columns (usually all of them).
            for statement, params_seq in runs:
                await cursor.executemany(statement, params_seq, returning=True)
                outcomes += [_outcome(await result.fetchone()) async for result in cursor.results()]
        return outcomes

    async def _apply_set(
        self, conn: AsyncConnection[Any], work: list[tuple[int, bytes, list[Any]]]
    ) -> list[str]:
        """Events that all write the same columns, as one statement (`handlers._sql_set`).

        Raises:
            DataError: an event's value does not fit its column; nothing was committed.
        """
        from psycopg.types.json import Jsonb

        statement = self._sets[work[0][1]]
        group, _, _, sink, _ = work[0][2]
        events = Jsonb([[p[1], p[2], p[4].obj] for _, _, p in work])
        cursor = await conn.execute(statement, [events, group, sink])
        return [
            "duplicate" if not fresh else "applied" if landed else "stale"
            for fresh, landed in await cursor.fetchall()
        ]

    async def _apply_each(
        self, conn: AsyncConnection[Any], work: list[tuple[int, bytes, list[Any]]]
    ) -> list[str | BaseException]:
        """The batch again, each statement under a savepoint: a data error rejects its event
        alone (the savepoint undoes its inbox row too), the others commit together."""
        from psycopg.errors import DataError

        results: list[str | BaseException] = []
        async with conn.transaction():
            for _, statement, params in work:
                try:
                    async with conn.transaction():
                        cursor = await conn.execute(statement, params)
                        results.append(_outcome(await cursor.fetchone()))
                except DataError as exc:
                    # A data exception (SQLSTATE class 22: a version or value out of range
                    # for its column, text in a number column) comes from the event itself:
                    # no retry can change it.
                    reason = exc.diag.message_primary or str(exc)
                    results.append(
                        Reject(f"PostgreSQL refused the event for table {self.table}: {reason}")
                    )
        return results

    def _sql(self, columns: tuple[str, ...], versioned: bool) -> bytes:
        """The statement for this set of columns, built once and cached as bytes: psycopg
        renders a composed statement again on every execution, which costs more than the
        rest of the call (the identifiers are plain ASCII, so no connection is needed)."""
        cache_key = (*columns, "\0versioned" if versioned else "\0unversioned")
        cached = self._statements.get(cache_key)
        if cached is None:
            cached = self._statements[cache_key] = self._build(columns, versioned).as_bytes(None)
            self._sets[cached] = set_statement(
                self.table,
                self.inbox_table,
                self.key_column,
                self.version_column if versioned else None,
                columns,
            )
        return cached

    def _build(self, names: tuple[str, ...], versioned: bool) -> Any:
        """WITH fresh AS (inbox insert), upsert AS (guarded upsert, only if fresh) SELECT both.

        `jsonb_populate_record(NULL::table, ...)` turns the event's JSON values into the
        columns' own types (timestamps, numerics, jsonb, ...), as INSERT ... VALUES would.
        """
        from psycopg import sql

        table, inbox = _name(self.table), _name(self.inbox_table)
        updates = [n for n in names if n != self.key_column] or [self.key_column]
        guard: sql.Composable = sql.SQL("")
        if versioned:
            guard = sql.SQL(" WHERE {t}.{v} IS NULL OR {t}.{v} < EXCLUDED.{v}").format(
                t=table, v=sql.Identifier(self.version_column or "")
            )
        statement = sql.SQL(
            "WITH fresh AS ("
            "INSERT INTO {inbox} (consumer_group, stream, message_id, sink) "
            "VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING 1), "
            "upsert AS ("
            "INSERT INTO {table} ({cols}) SELECT {picked} "
            "FROM jsonb_populate_record(NULL::{table}, %s::jsonb) AS r "
            "WHERE EXISTS (SELECT 1 FROM fresh) "
            "ON CONFLICT ({key}) DO UPDATE SET {updates}{guard} RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM fresh), EXISTS (SELECT 1 FROM upsert)"
        ).format(
            inbox=inbox,
            table=table,
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            picked=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(n)) for n in names),
            key=sql.Identifier(self.key_column),
            updates=sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                for n in updates
            ),
            guard=guard,
        )
        return statement


def _outcome(result: tuple[Any, ...] | None) -> str:
    """What the statement's (fresh, applied) reply means."""
    fresh, applied = result if result else (False, False)
    if not fresh:
        return "duplicate"
    return "applied" if applied else "stale"


def _name(dotted: str) -> Any:
    from psycopg import sql

    return sql.Identifier(*dotted.split("."))


class BatchSqlSink(SqlSink, BatchHandler):
    """`SqlSink` as a batch handler (what `SqlSink(...)` builds unless `batch=False`): the
    runtime hands it up to `batch_max` messages of its stream at a time, which it writes in
    one round trip. It must be the only handler of its stream."""
