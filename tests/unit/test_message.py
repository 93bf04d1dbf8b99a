"""Message decoding: lazy, tolerant of bad bytes, strict where retrying cannot help."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import MalformedMessage, Message
from worker.message import decode_json


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

    @pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]"])
    def test_data_nested_too_deeply_is_malformed(self, data: bytes) -> None:
        """JSON nested past the recursion limit raises MalformedMessage, not RecursionError."""
        with pytest.raises(MalformedMessage, match="nested too deeply"):
            _ = make(data=data).data

    def test_data_is_decoded_once(self) -> None:
        """The decoded document is cached: the same object on every access."""
        msg = make(data=b'{"a": [1]}')
        assert msg.data is msg.data


def _outcome(decode: Callable[[bytes], Any], value: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(decode(value))  # repr: NaN is not equal to itself
    except ValueError as exc:
        return "error", type(exc)


_json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=8,
)


class TestFastDecode:
    """`decode_json` takes a shortcut for compact UTF-8, and must agree with json.loads."""

    @given(
        document=_json_texts,
        encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]),
        before=st.sampled_from(["", " ", "\n\t"]),
        after=st.sampled_from(["", " ", "\r\n", "x", ",", "}", "\x00"]),
    )
    def test_agrees_with_json_loads_on_json_texts(
        self, document: Any, encoding: str, before: str, after: str
    ) -> None:
        """Any JSON document, in any encoding json accepts, padded or followed by junk."""
        value = (before + json.dumps(document, ensure_ascii=False) + after).encode(
            encoding, "surrogatepass"
        )
        assert _outcome(decode_json, value) == _outcome(json.loads, value)

    @given(value=st.binary(max_size=40))
    def test_agrees_with_json_loads_on_any_bytes(self, value: bytes) -> None:
        """Arbitrary bytes: the same document, or the same kind of error."""
        assert _outcome(decode_json, value) == _outcome(json.loads, value)

    @given(document=_json_texts, position=st.integers(min_value=0), byte=st.integers(0, 255))
    def test_agrees_with_json_loads_on_damaged_json(
        self, document: Any, position: int, byte: int
    ) -> None:
        """A JSON document with one byte overwritten (say, by a non-UTF-8 byte in a string)."""
        value = bytearray(json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        value[position % len(value)] = byte
        assert _outcome(decode_json, bytes(value)) == _outcome(json.loads, bytes(value))
