"""The outbox table, its migration, and the producer helper."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from worker.outbox import add, insert_sql, migrate

pytestmark = [pytest.mark.postgres]


def rows(pg: Any, table: str) -> list[tuple[Any, ...]]:
    return pg.execute(
        f"SELECT stream, type, key, data::text, event_id, version FROM {table} ORDER BY id"
    ).fetchall()


class TestMigration:
    def test_runs_again_without_harm(self, outbox_dsn: str, pg: Any, table: str) -> None:
        """A second migration of an existing table keeps its rows and its trigger."""
        import psycopg

        with psycopg.connect(outbox_dsn) as conn:
            add(conn, "s", "t", {"a": 1}, table=table)
        with psycopg.connect(outbox_dsn) as conn:
            migrate(conn, table)
        assert len(rows(pg, table)) == 1
        triggers = pg.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
            (table,),
        ).fetchone()
        assert triggers == (1,)

    def test_concurrent_migrations_take_turns(self, outbox_dsn: str, pg: Any) -> None:
        """Several processes migrating a new table at once all succeed."""
        import psycopg

        name = f"outbox_{uuid.uuid4().hex[:10]}"
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with psycopg.connect(outbox_dsn) as conn:
                    migrate(conn, name)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert pg.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)

    def test_refuses_odd_table_names(self, outbox_dsn: str) -> None:
        """A table name that is not a plain identifier never reaches SQL."""
        import psycopg

        with psycopg.connect(outbox_dsn) as conn, pytest.raises(ValueError, match="identifier"):
            migrate(conn, "outbox; DROP TABLE x")


class TestAdd:
    def test_sync_connection(self, outbox_dsn: str, pg: Any, table: str) -> None:
        """`add` writes the row in the caller's transaction, with a generated UUID event id."""
        import psycopg

        with psycopg.connect(outbox_dsn) as conn:
            event_id = add(
                conn, "orders", "order.created", {"n": 1}, key="o-1", version=3, table=table
            )
            assert rows(pg, table) == []  # not committed yet
        assert uuid.UUID(event_id)
        assert rows(pg, table) == [("orders", "order.created", "o-1", '{"n":1}', event_id, 3)]

    async def test_async_connection(self, outbox_dsn: str, pg: Any, table: str) -> None:
        """With an AsyncConnection, `add` is awaited; a given event id is kept."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(outbox_dsn) as conn:
            event_id = await add(conn, "orders", "order.paid", "x", event_id="e-1", table=table)
        assert event_id == "e-1"
        assert rows(pg, table) == [("orders", "order.paid", None, '"x"', "e-1", None)]

    def test_rolled_back_with_the_transaction(self, outbox_dsn: str, pg: Any, table: str) -> None:
        """A rolled-back transaction leaves no row."""
        import psycopg

        with psycopg.connect(outbox_dsn) as conn:
            add(conn, "orders", "order.created", {}, table=table)
            conn.rollback()
        assert rows(pg, table) == []

    def test_plain_sql_insert(self, pg: Any, table: str) -> None:
        """The documented INSERT works without the helper; event_id defaults to a UUID."""
        pg.execute(
            f"INSERT INTO {table} (stream, type, key, data, version) "
            "VALUES ('orders', 'order.created', 'o-9', '{\"total\": \"19.90\"}', 1)"
        )
        (row,) = rows(pg, table)
        assert row[:4] == ("orders", "order.created", "o-9", '{"total": "19.90"}')
        assert uuid.UUID(row[4]) and row[5] == 1
        assert "VALUES (%s, %s, %s, %s, %s, %s)" in insert_sql(table)

    def test_data_must_be_json(self, outbox_dsn: str, table: str) -> None:
        """Data that json.dumps refuses raises TypeError before anything is written."""
        import psycopg

        with psycopg.connect(outbox_dsn) as conn, pytest.raises(TypeError):
            add(conn, "orders", "t", {"at": object()}, table=table)
