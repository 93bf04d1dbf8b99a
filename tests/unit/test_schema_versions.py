"""Schema evolution: a handler for the newest shape of an event also handles older ones."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from worker import Handler, InvalidEvent, Message, Versions, handler
from worker.contracts import contracts
from worker.testing import deliver


class OrderV1(BaseModel):
    id: int
    amount: Decimal


class OrderV2(BaseModel):
    order_id: int
    total: Decimal
    currency: str


def v1_to_v2(v1: OrderV1) -> dict[str, Any]:
    return {"order_id": v1.id, "total": v1.amount, "currency": "EUR"}


ORDERS = Versions({1: OrderV1, 2: OrderV2}, upcast={1: v1_to_v2})
seen: list[OrderV2] = []


@handler(stream="orders", types=["order.completed"], model=ORDERS)
async def completed(msg: Message) -> None:
    seen.append(msg.event)


class Totals(Handler):
    model = ORDERS

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, msg: Message) -> None:
        self.events.append(msg.event)


class TestUpcasting:
    async def test_a_v1_entry_reaches_the_v2_handler_upcast(self) -> None:
        """An entry of schema version 1 is parsed as OrderV1, then upcast to OrderV2."""
        seen.clear()
        result = await deliver(
            completed, type="order.completed", data={"id": 7, "amount": "9.50"}, schema_version=1
        )
        assert result.outcome == "ok"
        assert seen == [OrderV2(order_id=7, total=Decimal("9.50"), currency="EUR")]

    async def test_an_entry_without_schema_version_counts_as_version_1(self) -> None:
        """Events published before anyone numbered them are the first version."""
        seen.clear()
        result = await deliver(completed, type="order.completed", data={"id": 1, "amount": 2})
        assert result.outcome == "ok" and seen[0].order_id == 1

    async def test_a_v2_entry_is_validated_as_v2(self) -> None:
        """The newest version validates against its own model and is not upcast."""
        seen.clear()
        data = {"order_id": 3, "total": "1.00", "currency": "USD"}
        result = await deliver(completed, type="order.completed", data=data, schema_version=2)
        assert result.outcome == "ok" and seen == [OrderV2.model_validate(data)]

    async def test_handler_classes_get_the_upcast_event_too(self) -> None:
        """`model = Versions(...)` on a Handler subclass works like `model=` on a function."""
        totals = Totals().bind(["orders"])
        result = await deliver(totals, data={"id": 4, "amount": 1}, schema_version=1)
        assert result.outcome == "ok"
        assert totals.events == [OrderV2(order_id=4, total=Decimal(1), currency="EUR")]  # type: ignore[attr-defined]


class TestRefused:
    async def test_a_version_with_no_model_is_dead_lettered_with_the_reason(self) -> None:
        """Schema version 3 is unknown: dead letter, saying which versions are known."""
        result = await deliver(
            completed, type="order.completed", data={"order_id": 1}, schema_version=3
        )
        assert result.outcome == "dead_letter"
        assert isinstance(result.error, InvalidEvent)
        assert str(result.error) == "schema version 3 of OrderV2 has no model (known: 1, 2)"

    async def test_a_version_with_no_upcaster_is_dead_lettered_with_the_reason(self) -> None:
        """A dict of models without upcasters handles the newest version only."""
        no_upcast = handler(stream="orders", model={1: OrderV1, 2: OrderV2})(completed.func)
        result = await deliver(no_upcast, data={"id": 1, "amount": 1}, schema_version=1)
        assert result.outcome == "dead_letter"
        assert str(result.error) == "schema version 1 of OrderV2 has no upcaster to version 2"

    async def test_an_old_payload_that_does_not_match_its_version_names_the_version(
        self,
    ) -> None:
        """A v1 entry with a bad field: the error says v1 and lists the field path."""
        result = await deliver(
            completed, type="order.completed", data={"id": "x", "amount": 1}, schema_version=1
        )
        assert result.outcome == "dead_letter"
        assert str(result.error).startswith("schema version 1: data does not match OrderV1: id:")

    async def test_an_upcaster_producing_an_invalid_event_is_dead_lettered(self) -> None:
        """An upcast result that fails the next version's model: the error names the step."""
        broken = Versions({1: OrderV1, 2: OrderV2}, upcast={1: lambda v1: {"order_id": v1.id}})
        h = handler(stream="orders", model=broken)(completed.func)
        result = await deliver(h, data={"id": 1, "amount": 1}, schema_version=1)
        assert result.outcome == "dead_letter"
        assert "upcast from schema version 1 to 2: data does not match OrderV2" in str(result.error)
        assert "currency: Field required" in str(result.error)

    def test_an_upcaster_for_the_newest_version_is_refused(self) -> None:
        """Nothing is newer than the newest version: such an upcaster is a mistake."""
        with pytest.raises(ValueError, match="newest"):
            Versions({1: OrderV1, 2: OrderV2}, upcast={2: v1_to_v2})


class TestSchemaExport:
    def test_every_version_is_exported(self) -> None:
        """`types` holds the newest schema; `versions` each version's own."""
        document = contracts([completed])
        entry = document["streams"]["orders"]
        assert entry["types"]["order.completed"]["title"] == "OrderV2"
        versions = entry["versions"]["order.completed"]
        assert {v: s["title"] for v, s in versions.items()} == {"1": "OrderV1", "2": "OrderV2"}
        assert json.loads(json.dumps(document)) == document


class TestUpcasterErrors:
    async def test_a_model_the_upcaster_builds_wrongly_is_an_invalid_event(self) -> None:
        """pydantic refusing what the upcaster builds: dead letter naming the step."""

        def build(v1: OrderV1) -> OrderV2:
            return OrderV2(order_id=v1.id, total=v1.amount, currency=None)  # type: ignore[arg-type]

        h = handler(stream="orders", model=Versions({1: OrderV1, 2: OrderV2}, upcast={1: build}))(
            completed.func
        )
        result = await deliver(h, data={"id": 1, "amount": 1}, schema_version=1)
        assert result.outcome == "dead_letter"
        assert str(result.error).startswith("upcast from schema version 1 to 2: data does not")
        assert "currency: Input should be a valid string" in str(result.error)

    async def test_an_upcaster_that_raises_anything_else_is_retried(self) -> None:
        """A bug in the upcaster is the handler's failure: retried, not dead-lettered."""

        def broken(v1: OrderV1) -> OrderV2:
            raise KeyError("oops")

        h = handler(stream="orders", model=Versions({1: OrderV1, 2: OrderV2}, upcast={1: broken}))(
            completed.func
        )
        result = await deliver(h, data={"id": 1, "amount": 1}, schema_version=1)
        assert result.outcome == "retry" and isinstance(result.error, KeyError)
