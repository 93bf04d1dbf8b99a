"""`syncworker schema --asyncapi`: the routes' contracts as an AsyncAPI 3.0 document."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from worker import Message, Versions, handler
from worker.asyncapi import asyncapi
from worker.cli import main


class Customer(BaseModel):
    id: int


class OrderV1(BaseModel):
    id: int


class Order(BaseModel):
    order_id: int
    customer: Customer


@handler(stream="shop:orders", types=["order.completed", "order.paid"], model=Order)
async def typed(msg: Message) -> None:
    """Typed."""


@handler(stream="audit")
async def everything(msg: Message) -> None:
    """Every entry, no model."""


versioned = handler(
    stream="shop:orders",
    types=["order.completed"],
    model=Versions({1: OrderV1, 2: Order}, upcast={1: lambda v1: {}}),
)(everything.func)


def _resolve(document: dict[str, object], ref: str) -> object:
    node: object = document
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict), ref
        node = node[part]
    return node


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


class TestAsyncApi:
    def test_a_channel_per_stream_and_a_message_per_type(self) -> None:
        """Addresses are the stream names; ids only use the characters AsyncAPI allows."""
        document = asyncapi([typed, everything])
        assert document["asyncapi"] == "3.0.0"
        orders = document["channels"]["shop_orders"]
        assert orders["address"] == "shop:orders"
        assert sorted(orders["messages"]) == ["order.completed", "order.paid"]
        assert orders["messages"]["order.paid"]["payload"]["title"] == "Order"
        assert "payload" not in document["channels"]["audit"]["messages"]["any"]
        operation = document["operations"]["receive-shop_orders"]
        assert operation["action"] == "receive"
        assert len(operation["messages"]) == 2

    def test_every_reference_resolves_inside_the_document(self) -> None:
        """Nested models live under components.schemas, where the payloads point."""
        document = asyncapi([typed, everything, versioned])
        refs = _refs(document)
        assert "#/components/schemas/Customer" in refs
        for ref in refs:
            assert ref.startswith("#/") and _resolve(document, ref) is not None

    def test_several_models_of_one_type_combine_and_versions_give_the_newest(self) -> None:
        """Two handlers typing order.completed: allOf; a Versions model counts as its newest."""
        document = asyncapi([typed, versioned])
        message = document["channels"]["shop_orders"]["messages"]["order.completed"]
        assert [s["title"] for s in message["payload"]["allOf"]] == ["Order", "Order"]

    def test_the_command_prints_it(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`syncworker schema --asyncapi` prints the document as JSON."""
        monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
        monkeypatch.setenv("SYNCWORKER_HANDLERS", f"{__name__}:typed")
        assert main(["schema", "--asyncapi"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document == json.loads(json.dumps(asyncapi([typed])))
