"""The publisher writes the field convention that handlers read."""

from __future__ import annotations

import json

import pytest

from worker.publish import event_fields


class TestEventFields:
    @pytest.mark.parametrize("data", [{"a": 1}, [1, 2], "hello", 3, None, True])
    def test_data_is_always_json(self, data: object) -> None:
        """Whatever the payload, `data` holds its JSON encoding (a str becomes a JSON string)."""
        assert json.loads(event_fields("t", data)["data"]) == data

    def test_optional_fields_appear_only_when_given(self) -> None:
        """key, event_id and version are written only when set; version as an integer."""
        assert set(event_fields("t", {})) == {"type", "data"}
        fields = event_fields("t", {}, key="k", event_id="e", version=7)
        assert (fields["key"], fields["event_id"], fields["version"]) == ("k", "e", "7")
