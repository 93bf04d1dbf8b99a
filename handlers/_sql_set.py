"""The SQL sink's statement for a whole batch: one statement instead of one per event.

When every event of a batch writes the same columns, applying them one by one in stream
order ends, for each entity, with its newest version (or, without versions, its last
event): each write replaces every column the next one writes. One statement can therefore
take the batch as one JSON array, insert every inbox row, keep only the events whose inbox
row is new, and upsert the newest of those per entity, under the same version guard. It
returns, per event: whether its inbox row is new (else: a duplicate) and whether it is the
write that landed (else: stale, or superseded within the batch). The rows are upserted in
key order, so that two batches locking the same rows take them in the same order.
"""

from __future__ import annotations

from typing import Any


def set_statement(
    table: str, inbox: str, key: str, version: str | None, names: tuple[str, ...]
) -> bytes:
    """The batch statement for events writing columns `names`; versioned when `version`.

    Parameters, in order: the events as one JSON array of [stream, message id, record]
    (one JSON document is far cheaper to send than three arrays), consumer group, sink name.
    """
    from psycopg import sql

    def ident(dotted: str) -> Any:
        return sql.Identifier(*dotted.split("."))

    t, k = ident(table), sql.Identifier(key)
    updates = [n for n in names if n != key] or [key]
    guard: sql.Composable = sql.SQL("")
    newest: sql.Composable = sql.SQL("i.n DESC")
    if version is not None:
        v = sql.Identifier(version)
        guard = sql.SQL(" WHERE {t}.{v} IS NULL OR {t}.{v} < EXCLUDED.{v}").format(t=t, v=v)
        newest = sql.SQL("r.{v} DESC NULLS LAST, i.n DESC").format(v=v)
    statement = sql.SQL(
        "WITH input AS (SELECT e->>0 AS stream, e->>1 AS message_id, e->2 AS record, n"
        " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(e, n)), "
        "fresh AS (INSERT INTO {inbox} (consumer_group, stream, message_id, sink)"
        " SELECT %s, stream, message_id, %s FROM input"
        " ON CONFLICT DO NOTHING RETURNING stream, message_id), "
        "newest AS (SELECT DISTINCT ON (r.{k}) i.n AS syncworker_n, {picked_r}"
        " FROM input i JOIN fresh f ON f.stream = i.stream AND f.message_id = i.message_id,"
        " LATERAL jsonb_populate_record(NULL::{t}, i.record) AS r"
        " ORDER BY r.{k}, {newest}), "
        "upsert AS (INSERT INTO {t} ({cols}) SELECT {picked_w} FROM newest w ORDER BY w.{k}"
        " ON CONFLICT ({k}) DO UPDATE SET {updates}{guard} RETURNING {t}.{k}) "
        "SELECT f.message_id IS NOT NULL, u.{k} IS NOT NULL FROM input i"
        " LEFT JOIN fresh f ON f.stream = i.stream AND f.message_id = i.message_id"
        " LEFT JOIN newest w ON w.syncworker_n = i.n"
        " LEFT JOIN upsert u ON u.{k} = w.{k}"
        " ORDER BY i.n"
    ).format(
        inbox=ident(inbox),
        t=t,
        k=k,
        newest=newest,
        cols=sql.SQL(", ").join(map(sql.Identifier, names)),
        picked_r=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(n)) for n in names),
        picked_w=sql.SQL(", ").join(sql.SQL("w.{}").format(sql.Identifier(n)) for n in names),
        updates=sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
            for n in updates
        ),
        guard=guard,
    )
    return statement.as_bytes(None)
