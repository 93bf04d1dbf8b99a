"""The outbox table, its wake-up trigger, and the idempotent migration that creates them.

Columns, in the event convention that `worker.publish.event_fields` writes to a stream:

- `id bigserial`: the relay publishes rows oldest id first, a whole transaction at a time (see
  `worker.outbox.relay` for why that is the order of each key's commits).
- `stream`, `type`, `key`, `data` (json: kept as the producer wrote it, checked to be JSON),
  `event_id` (text; a random UUID unless the producer gives one: consumers deduplicate on it,
  so the relay's at-least-once duplicates carry the same id), `version` (bigint or NULL).
- `created_at`: when the row was written; the relay's lag metric is the age of the oldest row.
- `txid xid8`: the writing transaction (`pg_current_xact_id()`, by default, so a plain INSERT
  sets it too), indexed: the relay publishes each transaction's rows together, contiguous and
  in id order. Rows written before the column existed have NULL and count as a transaction
  each.

A statement-level AFTER INSERT trigger sends NOTIFY on `CHANNEL`. PostgreSQL delivers it at
commit (and folds the notifications of one transaction into one), so the relay wakes exactly
when rows become visible, and a plain INSERT written by hand wakes it too. A rolled-back
transaction notifies nobody.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import Connection

TABLE = "syncworker_outbox"
"""The default table name."""

CHANNEL = "syncworker_outbox"
"""The NOTIFY channel of the default table; `channel(table)` for the others."""

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


def check_table(table: str) -> str:
    """A table name, checked: it is put into SQL, and into trigger and function names.

    Raises:
        ValueError: not a plain lowercase identifier of at most 51 characters.
    """
    if not _NAME.match(table):
        raise ValueError(
            f"outbox table name {table!r} must be a lowercase identifier (a-z, 0-9, _), "
            "at most 51 characters"
        )
    return table


def channel(table: str) -> str:
    """The NOTIFY channel of `table`."""
    return CHANNEL if table == TABLE else f"{TABLE}_{check_table(table)}"


def lock_key(table: str) -> int:
    """The advisory lock (a signed 64-bit key) that the leading relay of `table` holds.

    Derived from the name, so that relays of different outbox tables lead independently.
    """
    digest = hashlib.sha256(f"syncworker.outbox:{check_table(table)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def statements(table: str = TABLE) -> list[str]:
    """The DDL of the migration; each statement may run again without harm."""
    t = check_table(table)
    return [
        f"""CREATE TABLE IF NOT EXISTS {t} (
            id bigserial PRIMARY KEY,
            stream text NOT NULL,
            type text NOT NULL,
            key text,
            data json NOT NULL DEFAULT 'null',
            event_id text NOT NULL DEFAULT gen_random_uuid()::text,
            version bigint,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            txid xid8 DEFAULT pg_current_xact_id()
        )""",
        # Tables made before the txid column get it here. Checked first, so that a migration
        # with nothing to do takes no lock on the table (ALTER and CREATE INDEX would).
        f"""DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{t}'::regclass
                           AND attname = 'txid' AND NOT attisdropped) THEN
                ALTER TABLE {t} ADD COLUMN txid xid8;
                ALTER TABLE {t} ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
            END IF;
            IF to_regclass('{t}_txid') IS NULL THEN
                CREATE INDEX {t}_txid ON {t} (txid, id);
            END IF;
        END
        $$""",
        f"""CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{channel(t)}', '');
                RETURN NULL;
            END
            $$""",
        f"""CREATE OR REPLACE TRIGGER {t}_notify AFTER INSERT ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify()""",
    ]


def migrate(conn: Connection[Any], table: str = TABLE) -> None:
    """Create the outbox table and its trigger if they are missing, in one transaction.

    Safe to run on every deploy and from several processes at once: a transaction-scoped
    advisory lock makes concurrent runs take turns (two `CREATE TABLE IF NOT EXISTS` racing
    each other can otherwise fail on PostgreSQL's catalog unique index).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(table) ^ 1,))
        for statement in statements(table):
            conn.execute(statement)
