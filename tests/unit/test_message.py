"""Message decoding: lazy, tolerant of bad bytes, strict where retrying cannot help."""

from __future__ import annotations

import pytest

from worker import MalformedMessage, Message


def make(**fields: bytes) -> Message:
    return Message("orders", "1700000000123-4", {k.encode(): v for k, v in fields.items()})


class TestConventionFields:
    def test_conventional_fields_are_decoded(self) -> None:
        """type, key, event_id, version and data come out as str, int and JSON."""
        msg = make(
            type=b"order.paid", key=b"o-1", event_id=b"e-9", version=b"12", data=b'{"amount": 10}'
        )
        assert (msg.type, msg.key, msg.event_id, msg.version) == ("order.paid", "o-1", "e-9", 12)
        assert msg.data == {"amount": 10}
        assert msg.timestamp_ms == 1700000000123

    def test_entries_without_the_convention_still_work(self) -> None:
        """Missing conventional fields are None; the raw fields are all there."""
        msg = make(temperature=b"21.5")
        assert (msg.type, msg.key, msg.version, msg.data) == (None, None, None, None)
        assert msg.fields == {"temperature": "21.5"}

    def test_non_utf8_bytes_never_raise_in_fields(self) -> None:
        """Undecodable bytes become U+FFFD in `fields` and stay exact in `raw`."""
        msg = Message("s", "1-0", {b"\xff\xfe": b"ok\x80"})
        assert msg.fields == {"\ufffd\ufffd": "ok\ufffd"}
        assert msg.raw == {b"\xff\xfe": b"ok\x80"}


class TestMalformed:
    @pytest.mark.parametrize("data", [b"{nope", b"\xff\xfe", b""])
    def test_undecodable_data_is_malformed(self, data: bytes) -> None:
        """Invalid JSON (or invalid UTF-8) in data raises MalformedMessage, a Reject."""
        with pytest.raises(MalformedMessage):
            _ = make(data=data).data

    def test_non_integer_version_is_malformed(self) -> None:
        """A version that is not an integer raises MalformedMessage."""
        with pytest.raises(MalformedMessage, match="version"):
            _ = make(version=b"v2").version

    def test_data_is_decoded_once(self) -> None:
        """The decoded document is cached: the same object on every access."""
        msg = make(data=b'{"a": [1]}')
        assert msg.data is msg.data
