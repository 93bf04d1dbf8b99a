"""A [[routes]] entry can name the model its payloads must match (`model = "module:attr"`)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, TypeAdapter

from worker import ConfigError, Message, handler
from worker.examples.order_payment import MALFORMED_DATA, OrderState, history
from worker.registry import handlers_from_settings
from worker.settings import WorkerSettings
from worker.testing import deliver


class Order(BaseModel):
    order_id: int


@handler(stream="orders")
async def untyped(msg: Message) -> None:
    """Declares no model of its own."""


def _settings(model: str) -> WorkerSettings:
    route = {"stream": "orders", "handler": f"{__name__}:untyped", "model": model}
    return WorkerSettings(routes=[route])  # type: ignore[list-item]


class TestRouteModel:
    async def test_the_route_model_validates_payloads_of_a_handler_without_one(self) -> None:
        """The handler named by the route gets the route's model: a wrong payload is refused."""
        (bound,) = handlers_from_settings(_settings(f"{__name__}:Order"))
        assert bound.model is Order
        result = await deliver(bound, data={"order_id": "seven"})
        assert result.outcome == "dead_letter"
        assert "order_id: Input should be a valid integer" in str(result.error)
        assert (await deliver(bound, data={"order_id": 7})).outcome == "ok"

    def test_a_model_that_does_not_import_is_a_configuration_error(self) -> None:
        """Start-up fails naming the setting, as for an unknown handler."""
        with pytest.raises(ConfigError, match=r"routes\[0\]\.model: cannot import"):
            handlers_from_settings(_settings(f"{__name__}:Nothing"))


class TestOrderPaymentModel:
    def test_every_event_of_the_scenario_matches_its_model(self) -> None:
        """The demo's events validate against OrderState; only the malformed one cannot."""
        adapter = TypeAdapter(OrderState)
        published = history(200).published
        for fields in published:
            if fields["data"] != MALFORMED_DATA:
                adapter.validate_python(json.loads(fields["data"]))
        assert sum(f["data"] == MALFORMED_DATA for f in published) == 1
