"""`syncworker schema` prints the routes' contracts; routes choose their envelope in TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main
from worker.errors import ConfigError
from worker.registry import handlers_from_settings
from worker.settings import load_settings

CONFIG = """
[[routes]]
stream = "orders"
handler = "tests.unit.test_typed_events:sync_total"

[[routes]]
stream = "payments"
handler = "tests.unit.test_typed_events:Totals"
types = ["payment.made"]
envelope = "faststream"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SYNCWORKER_HANDLERS", "SYNCWORKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "worker.toml"
    path.write_text(CONFIG)
    return path


class TestSchemaCommand:
    def test_prints_json_schema_per_stream_and_type(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One JSON document: each route's envelope and its model's schema by type."""
        assert main(["schema", "--config", str(config)]) == 0
        doc = json.loads(capsys.readouterr().out)
        orders = doc["streams"]["orders"]
        assert orders["envelope"] == "syncworker"
        schema = orders["types"]["order.completed"]
        assert schema["title"] == "OrderCompleted" and "order_id" in schema["required"]
        payments = doc["streams"]["payments"]
        assert payments["envelope"] == "faststream"
        assert payments["types"]["payment.made"]["title"] == "OrderCompleted"


class TestRouteEnvelope:
    def test_route_envelope_binds_the_handler(self, config: Path) -> None:
        """`envelope` on a route sets the bound handler's envelope; others keep their own."""
        handlers = {h.name: h for h in handlers_from_settings(load_settings(str(config)))}
        envelopes = {h.streams[0]: h.envelope for h in handlers.values()}
        assert envelopes == {"orders": "syncworker", "payments": "faststream"}

    def test_unknown_envelope_in_a_route_is_refused(self, tmp_path: Path) -> None:
        """A misspelt envelope fails settings validation, naming the choices."""
        path = tmp_path / "bad.toml"
        path.write_text('[[routes]]\nstream = "s"\nhandler = "x:y"\nenvelope = "cloudevent"\n')
        with pytest.raises(ConfigError, match="cloudevents"):
            load_settings(str(path))
