"""Debezium change events, as Debezium Server's Redis (stream) sink writes them.

The sink (`io.debezium.server.redis.RedisStreamChangeConsumer`, Debezium Server 2.x) XADDs
each change record to one stream per table, `<topic.prefix>.<schema>.<table>` by default,
in one of two layouts (`debezium.sink.redis.message.format`):

- `compact` (the default): ONE field whose name is the record key and whose value is the
  record value, both JSON as the converter wrote them;
- `extended`: two fields, `key` and `value`, holding the same two strings.

A null key or value is written as the sink's `null.key` / `null.value` text, `default` unless
configured otherwise. The value is the change event, with or without the JSON converter's
schema wrapper `{"schema": {...}, "payload": {...}}` (`value.converter.schemas.enable`);
the payload has `op` (`c` create, `u` update, `d` delete, `r` snapshot read, `t` truncate),
`before`, `after`, `source` (connector, db, schema, table, position: `lsn` on PostgreSQL,
`file`/`pos`/`row` on MySQL, ...) and `ts_ms`. After a delete Debezium emits a *tombstone*:
same key, null value (for Kafka log compaction); it carries no change.

The `Message` it becomes:

- `type`: `<schema or db>.<table>.<created|updated|deleted|read|truncated>`, e.g.
  `inventory.customers.updated`: the source's own names, not the stream's, so a renamed
  topic prefix changes nothing for the routes' `types`;
- `key`: the record key: the value of a one-column key as text (`1001`), compact JSON of the
  key object for a composite key (`{"order_id":1,"line":2}`); None for a table without one;
- `data`: the row after the change (`after`), or before it for a delete (`before`: with
  PostgreSQL's default replica identity only the key columns), None for a truncate;
- `event_id`: `<schema>.<table>:<position>:<op>:<key>`, the position being the change's
  `lsn` (PostgreSQL), `change_lsn` (SQL Server), `scn` (Oracle), `file:pos:row` (MySQL) or
  else `ts_ms`: a re-sent change (Debezium is at-least-once) has the same id;
- `version`: the PostgreSQL `lsn` (or Oracle `scn`), which grows with each change of a row,
  so the projection and SQL sink guards drop duplicates and stale changes; None elsewhere
  (the projection then deduplicates by entry id);
- `attributes`: the whole change: `op`, `before`, `after`, `source`, `ts_ms`,
  `transaction` (when present), plus `record_key` (the key object) and `format`
  (`compact`/`extended`).

Tombstones (the value `default`, `null` or empty) are acknowledged untouched and counted as
`skipped`; no handler sees them. An entry that is not a change event (not JSON, no known
`op`, no `source.table`) is dead-lettered with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker.envelopes.opened import Opened, json_payload
from worker.errors import MalformedMessage

OPS = {"c": "created", "u": "updated", "d": "deleted", "r": "read", "t": "truncated"}
"""Debezium's `op` codes -> the last part of the message type."""

NULL_TEXTS = frozenset({b"default", b"null", b""})
"""How the sink writes a null key or value: its `null.key`/`null.value` default `default`;
`null` and empty also count, for sinks configured with those."""

_KEY = b"key"
_VALUE = b"value"


def open_debezium(raw: Mapping[bytes, bytes]) -> Opened:
    """Read a change event written by Debezium Server's Redis sink (compact or extended).

    Raises:
        MalformedMessage: neither layout, the value is not a change event, or it names no
            table or an unknown `op`.
    """
    if len(raw) == 2 and _KEY in raw and _VALUE in raw:
        layout, key_text, value_text = "extended", raw[_KEY], raw[_VALUE]
    elif len(raw) == 1:
        ((key_text, value_text),) = raw.items()
        layout = "compact"
    else:
        raise MalformedMessage(
            f"not a Debezium entry: {len(raw)} fields, expected one (compact format) or "
            "`key` and `value` (extended format)"
        )
    record_key = _record_key(key_text)
    key = _key_text(record_key)
    if value_text in NULL_TEXTS:
        return Opened(type=None, key=key, attributes={"record_key": record_key}, skip=True)
    change = _payload(json_payload(value_text, "the Debezium change event"))
    if not isinstance(change, dict):
        raise MalformedMessage(f"the Debezium change event is a {type(change).__name__}")
    op = change.get("op")
    if op not in OPS:
        raise MalformedMessage(f"not a Debezium change event: op is {op!r}, not one of c/u/d/r/t")
    source = change.get("source")
    if not isinstance(source, dict) or not source.get("table"):
        raise MalformedMessage("not a Debezium change event: source.table is missing")
    table = f"{source.get('schema') or source.get('db')}.{source['table']}"
    data = change.get("before") if op == "d" else change.get("after")
    attributes = {**change, "record_key": record_key, "format": layout}
    return Opened(
        type=f"{table}.{OPS[op]}",
        key=key,
        data=data,
        event_id=f"{table}:{_position(source, change)}:{op}:{key or ''}",
        version=_version(source),
        attributes=attributes,
    )


def _payload(value: Any) -> Any:
    """`value` without the JSON converter's schema wrapper, if it has one."""
    if isinstance(value, dict) and "payload" in value and set(value) <= {"schema", "payload"}:
        return value["payload"]
    return value


def _record_key(key_text: bytes) -> Any:
    if key_text in NULL_TEXTS:
        return None
    return _payload(json_payload(key_text, "the Debezium record key"))


def _key_text(record_key: Any) -> str | None:
    if record_key is None:
        return None
    if isinstance(record_key, dict) and len(record_key) == 1:
        (record_key,) = record_key.values()
    if isinstance(record_key, str):
        return record_key
    return json.dumps(record_key, separators=(",", ":"))


def _position(source: Mapping[str, Any], change: Mapping[str, Any]) -> str:
    for name in ("lsn", "change_lsn", "scn"):
        if source.get(name) is not None:
            return str(source[name])
    if source.get("file") is not None:
        return f"{source['file']}:{source.get('pos')}:{source.get('row', 0)}"
    return str(source.get("ts_ms", change.get("ts_ms")))


def _version(source: Mapping[str, Any]) -> int | None:
    for name in ("lsn", "scn"):
        value = source.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None
