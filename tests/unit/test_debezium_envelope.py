"""The debezium envelope: Debezium Server's Redis sink entries read as Messages.

The fixtures in tests/fixtures/debezium are laid out as Debezium Server's
`RedisStreamChangeConsumer` writes them (see that directory's README for the source).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker import MalformedMessage, Message, handler
from worker.envelopes import OPENERS
from worker.testing import deliver, make_message

FIXTURES = Path(__file__).parent.parent / "fixtures" / "debezium"


def recorded(name: str) -> list[dict[bytes, bytes]]:
    """The entries of a fixture file, as redis-py returns their fields."""
    entries = json.loads((FIXTURES / name).read_text())
    return [{k.encode(): v.encode() for k, v in e.items()} for e in entries]


def open_(raw: dict[bytes, bytes]) -> Any:
    return OPENERS["debezium"](raw)


class TestCompactFormat:
    def test_snapshot_read_with_schema_wrapper(self) -> None:
        """A snapshot row with the JSON converter's schemas: type, key, data, id, version."""
        opened = open_(recorded("postgres_customers.json")[0])
        assert opened.type == "inventory.customers.read"
        assert opened.key == "1001"
        assert opened.data == {
            "id": 1001,
            "first_name": "Sally",
            "last_name": "Thomas",
            "email": "sally.thomas@acme.com",
        }
        assert opened.version == 34102072
        assert opened.event_id == "inventory.customers:34102072:r:1001"
        assert opened.attributes["op"] == "r"
        assert opened.attributes["source"]["connector"] == "postgresql"
        assert opened.attributes["record_key"] == {"id": 1001}
        assert opened.attributes["format"] == "compact"

    def test_each_operation_names_its_type(self) -> None:
        """c/u/d/r map to created/updated/deleted/read; a tombstone is marked to skip."""
        got = [(o.type, o.key, o.skip) for o in map(open_, recorded("postgres_customers.json"))]
        assert got == [
            ("inventory.customers.read", "1001", False),
            ("inventory.customers.read", "1002", False),
            ("inventory.customers.created", "1005", False),
            ("inventory.customers.updated", "1001", False),
            ("inventory.customers.updated", "1005", False),
            ("inventory.customers.deleted", "1002", False),
            (None, "1002", True),
            ("inventory.customers.updated", "1001", False),
        ]

    def test_delete_carries_the_row_before(self) -> None:
        """A delete's data is `before`; `after` stays reachable in the attributes."""
        opened = open_(recorded("postgres_customers.json")[5])
        assert opened.data["id"] == 1002
        assert opened.attributes["after"] is None

    def test_a_resent_change_has_the_same_event_id(self) -> None:
        """The change a connector restart sends again keeps its event id and version."""
        entries = recorded("postgres_customers.json")
        first, again = open_(entries[3]), open_(entries[7])
        assert (first.event_id, first.version) == (again.event_id, again.version)


class TestExtendedFormat:
    def test_key_and_value_fields(self) -> None:
        """`key` and `value` fields; MySQL's binlog position makes the id, no version."""
        created, updated, deleted, tombstone = map(open_, recorded("mysql_orders.json"))
        assert (created.type, created.key, created.data["quantity"]) == (
            "inventory.orders.created",
            "10005",
            2,
        )
        assert created.event_id == "inventory.orders:mysql-bin.000003:1124:0:c:10005"
        assert created.version is None
        assert updated.attributes["before"]["quantity"] == 2
        assert updated.data["quantity"] == 3
        assert deleted.type == "inventory.orders.deleted" and deleted.data["quantity"] == 3
        assert created.attributes["format"] == "extended"
        assert tombstone.skip

    def test_composite_key_is_compact_json(self) -> None:
        """A key of several columns is the key object as compact JSON."""
        value = json.loads(recorded("mysql_orders.json")[0][b"value"])
        opened = open_(
            {b"key": b'{"order_number": 1, "line": 2}', b"value": json.dumps(value).encode()}
        )
        assert opened.key == '{"order_number":1,"line":2}'


class TestRefused:
    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({b"a": b"1", b"b": b"2", b"c": b"3"}, "3 fields"),
            ({b'{"id":1}': b"{not json"}, "not valid JSON"),
            ({b'{"id":1}': b'{"op":"x","source":{"table":"t"}}'}, "op is 'x'"),
            ({b'{"id":1}': b'{"op":"c","after":{}}'}, "source.table"),
            ({b'{"id":1}': b"[1, 2]"}, "is a list"),
        ],
    )
    def test_unreadable_entries_say_why(self, fields: dict[bytes, bytes], reason: str) -> None:
        """Anything but a change event raises MalformedMessage with the reason."""
        with pytest.raises(MalformedMessage, match=reason):
            open_(fields)


class TestDispatch:
    async def test_tombstone_is_skipped_and_no_handler_runs(self) -> None:
        """A tombstone is acknowledged as skipped; the handler never sees it."""
        seen: list[Message] = []

        @handler(stream="dbserver1.inventory.customers", envelope="debezium")
        async def record(msg: Message) -> None:
            seen.append(msg)

        tombstone = recorded("postgres_customers.json")[6]
        fields = {k.decode(): v for k, v in tombstone.items()}
        msg = make_message("dbserver1.inventory.customers", fields=fields)
        result = await deliver(record, msg)
        assert result.outcome == "skipped"
        assert seen == []

    async def test_unreadable_entry_is_dead_lettered(self) -> None:
        """An entry that is not a change event is dead-lettered, not retried."""

        @handler(stream="dbserver1.inventory.customers", envelope="debezium")
        async def record(msg: Message) -> None: ...

        msg = make_message("dbserver1.inventory.customers", fields={'{"id":1}': "nope"})
        result = await deliver(record, msg)
        assert result.outcome == "dead_letter"
