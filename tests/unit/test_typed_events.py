"""Typed events: handlers declare a model, get `msg.event`, and bad payloads dead-letter."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from worker import Handler, Message, handler
from worker.contracts import contracts
from worker.errors import InvalidEvent
from worker.publish import cloudevent_fields
from worker.runtime.stats import Stats
from worker.testing import deliver, make_message


class Customer(BaseModel):
    id: int


class OrderCompleted(BaseModel):
    order_id: int
    total: Decimal
    customer: Customer


GOOD = {"order_id": 7, "total": "19.90", "customer": {"id": 3}}


@handler(stream="orders", types=["order.completed"], model=OrderCompleted)
async def sync_total(msg: Message) -> None:
    sync_total.seen.append(msg.event)  # type: ignore[attr-defined]


sync_total.seen = []  # type: ignore[attr-defined]


class Totals(Handler):
    model = OrderCompleted

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def handle(self, msg: Message) -> None:
        self.seen.append(msg.event)


class TestTypedHandlers:
    async def test_function_gets_the_parsed_model(self) -> None:
        """A valid payload reaches the function as msg.event, an OrderCompleted."""
        sync_total.seen.clear()  # type: ignore[attr-defined]
        result = await deliver(sync_total, type="order.completed", data=GOOD)
        assert result.outcome == "ok"
        (event,) = sync_total.seen  # type: ignore[attr-defined]
        assert isinstance(event, OrderCompleted) and event.total == Decimal("19.90")

    async def test_handler_class_gets_the_parsed_model_the_same_way(self) -> None:
        """A Handler subclass with a `model` attribute reads msg.event too."""
        totals = Totals().bind(["orders"])
        assert (await deliver(totals, type="order.completed", data=GOOD)).outcome == "ok"
        assert isinstance(totals.seen[0], OrderCompleted)  # type: ignore[attr-defined]

    async def test_blocking_function_is_validated_too(self) -> None:
        """A plain (thread) function with a model gets msg.event in its thread."""
        got: list[Any] = []

        @handler(stream="orders", model=OrderCompleted)
        def blocking(msg: Message) -> None:
            got.append(msg.event)

        assert (await deliver(blocking, data=GOOD)).outcome == "ok"
        assert isinstance(got[0], OrderCompleted)

    async def test_invalid_payload_dead_letters_with_field_paths(self) -> None:
        """Validation errors dead-letter at once (attempt 1), listing each path and message."""
        sync_total.seen.clear()  # type: ignore[attr-defined]
        bad = {"order_id": "seven", "total": "19.90", "customer": {}}
        with capture_logs() as logs:
            result = await deliver(sync_total, type="order.completed", data=bad)
        assert result.outcome == "dead_letter" and isinstance(result.error, InvalidEvent)
        text = str(result.error)
        assert text.startswith("data does not match OrderCompleted: ")
        assert "order_id: Input should be a valid integer" in text
        assert "customer.id: Field required" in text
        assert sync_total.seen == []  # type: ignore[attr-defined]
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["event.invalid"]

    async def test_invalid_payload_is_counted(self) -> None:
        """The invalid_events counter of the stream moves (exported as a metric)."""
        from worker.typed import parse

        stats = Stats()
        with pytest.raises(InvalidEvent):
            parse(OrderCompleted, make_message("orders", data={}), stats)
        assert stats.invalid_events["orders"] == 1

    async def test_msg_event_without_a_model_explains_itself(self) -> None:
        """Reading msg.event in an untyped handler raises AttributeError saying why."""
        errors: list[str] = []

        @handler(stream="orders")
        async def untyped(msg: Message) -> None:
            try:
                msg.event  # noqa: B018
            except AttributeError as exc:
                errors.append(str(exc))

        await deliver(untyped, data={})
        assert "declare a model" in errors[0]

    async def test_model_and_envelope_together(self) -> None:
        """A CloudEvent's data validates against the model like a syncworker entry's."""
        got: list[Any] = []

        @handler(stream="orders", envelope="cloudevents", model=OrderCompleted)
        async def typed_ce(msg: Message) -> None:
            got.append(msg.event)

        fields = cloudevent_fields("order.completed", GOOD, source="/shop", key="order-7")
        assert (await deliver(typed_ce, make_message("orders", fields=fields))).outcome == "ok"
        assert got[0].order_id == 7


class TestPublisherCloudEvents:
    def test_structured_event_carries_the_attributes(self) -> None:
        """One `data` field: a CloudEvent 1.0 with id, source, type, partitionkey, data."""
        fields = cloudevent_fields(
            "order.paid", {"n": 1}, source="/shop", key="k", event_id="e", version=2
        )
        event = json.loads(fields["data"])
        assert list(fields) == ["data"]
        assert event["specversion"] == "1.0" and event["id"] == "e"
        assert (event["type"], event["source"], event["partitionkey"]) == (
            "order.paid",
            "/shop",
            "k",
        )
        assert (event["data"], event["version"], event["datacontenttype"]) == (
            {"n": 1},
            2,
            "application/json",
        )

    def test_id_defaults_to_a_new_uuid(self) -> None:
        """Without event_id each event gets an id of its own."""
        a = json.loads(cloudevent_fields("t", None, source="s")["data"])["id"]
        b = json.loads(cloudevent_fields("t", None, source="s")["data"])["id"]
        assert a != b and len(a) == 36


class TestContracts:
    def test_schema_per_stream_and_type(self) -> None:
        """Each typed route's type maps to its model's JSON Schema, self-contained with $id."""
        doc = contracts([sync_total, Totals().bind(["payments"], ["payment.made"])])
        schema = doc["streams"]["orders"]["types"]["order.completed"]
        assert schema["$id"].startswith("urn:syncworker:orders:order.completed:")
        assert schema["properties"]["customer"] == {"$ref": "#/$defs/Customer"}
        assert "Customer" in schema["$defs"]
        assert doc["streams"]["payments"]["types"]["payment.made"]["title"] == "OrderCompleted"
        assert doc["streams"]["orders"]["envelope"] == "syncworker"

    def test_untyped_handlers_list_their_types_with_an_open_schema(self) -> None:
        """A type without a model is listed with {}; one taking all types lists "*"."""

        @handler(stream="orders", types=["order.created"])
        async def a(msg: Message) -> None: ...

        @handler(stream="audit", envelope="dapr")
        async def b(msg: Message) -> None: ...

        doc = contracts([a, b])
        assert doc["streams"]["orders"]["types"] == {"order.created": {}}
        assert doc["streams"]["audit"] == {"envelope": "dapr", "types": {"*": {}}}


class TestCounters:
    def test_undecodable_and_invalid_events_are_exported(self) -> None:
        """Both dead-letter causes have a per-stream counter, zero until they happen."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import generate_latest

        from tests.ops_helpers import samples, value
        from worker.ops.metrics import GroupGauges, WorkerCollector

        stats = Stats()

        def scrape() -> dict:  # type: ignore[type-arg]
            registry = CollectorRegistry()
            registry.register(
                WorkerCollector(stats, "billing", {"orders": ["sync"]}, lambda: {}, GroupGauges())
            )
            return samples(generate_latest(registry).decode())

        for name in ("syncworker_undecodable_total", "syncworker_invalid_events_total"):
            assert value(scrape(), name, group="billing", stream="orders") == 0
        stats.undecodable["orders"] = 2
        stats.invalid_events["orders"] = 5
        assert (
            value(scrape(), "syncworker_undecodable_total", group="billing", stream="orders") == 2
        )
        found = value(scrape(), "syncworker_invalid_events_total", group="billing", stream="orders")
        assert found == 5
