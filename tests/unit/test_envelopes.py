"""Envelopes: entries other frameworks publish reach handlers as the same Message view."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from worker import MalformedMessage, Message, handler
from worker.envelopes import OPENERS
from worker.envelopes.faststream import IDENTITY
from worker.errors import ConfigError
from worker.publish import cloudevent_fields
from worker.registry import validate
from worker.testing import deliver, make_message


def faststream_binary(body: bytes, headers: dict[str, str]) -> bytes:
    """FastStream's BinaryMessageFormatV1, laid out as its encoder does."""
    encoded = b"".join(
        struct.pack(">H", len(part)) + part
        for name, value in headers.items()
        for part in (name.encode(), value.encode())
    )
    headers_at = len(IDENTITY) + 2 + 8
    data_at = headers_at + 2 + len(encoded)
    return (
        IDENTITY
        + struct.pack(">HII", 1, headers_at, data_at)
        + struct.pack(">H", len(headers))
        + encoded
        + body
    )


def raw(**fields: str | bytes) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def structured(**attributes: Any) -> dict[bytes, bytes]:
    event = {"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.paid"}
    event.update(attributes)
    return raw(data=json.dumps(event))


class TestCloudEvents:
    def test_structured_mode_maps_attributes(self) -> None:
        """Field `data` holding the JSON event: type, subject as key, id, data, extensions."""
        opened = OPENERS["cloudevents"](structured(subject="order-7", data={"n": 1}, version=3))
        assert (opened.type, opened.key, opened.event_id) == ("order.paid", "order-7", "e-1")
        assert (opened.data, opened.version) == ({"n": 1}, 3)
        assert opened.attributes["source"] == "/shop"

    def test_partitionkey_wins_over_subject(self) -> None:
        """The partitioning extension is the ordering key when both are present."""
        opened = OPENERS["cloudevents"](structured(subject="s", partitionkey="p"))
        assert opened.key == "p"

    def test_data_base64_is_decoded_by_its_content_type(self) -> None:
        """data_base64 with a JSON content type yields the decoded JSON."""
        encoded = base64.b64encode(b'{"a": 1}').decode()
        opened = OPENERS["cloudevents"](
            structured(data_base64=encoded, datacontenttype="application/json")
        )
        assert opened.data == {"a": 1}

    def test_binary_mode_reads_ce_fields(self) -> None:
        """ce_* fields are the attributes, `data` the payload, `content-type` its media type."""
        entry = raw(
            ce_specversion="1.0",
            ce_id="b-1",
            ce_type="order.shipped",
            ce_source="/shop",
            ce_subject="order-9",
            **{"content-type": "application/json"},
            data='{"carrier": "ups"}',
        )
        opened = OPENERS["cloudevents"](entry)
        assert (opened.type, opened.key, opened.event_id) == ("order.shipped", "order-9", "b-1")
        assert opened.data == {"carrier": "ups"}

    def test_binary_mode_text_payload_stays_text(self) -> None:
        """A text/plain payload is a str, not parsed as JSON."""
        entry = raw(
            ce_specversion="1.0",
            ce_id="1",
            ce_type="t",
            ce_source="s",
            ce_datacontenttype="text/plain",
            data="hello",
        )
        assert OPENERS["cloudevents"](entry).data == "hello"

    @pytest.mark.parametrize(
        ("entry", "reason"),
        [
            (raw(data='{"specversion": "1.0"}'), "missing required attribute(s) id, source, type"),
            (raw(type="order.paid", data="{}"), "specversion is None"),
            (raw(other="x"), "no data field"),
            (raw(data="[1]"), "holds list, not an object"),
            (raw(data="{oops"), "not valid JSON"),
            (structured(specversion="0.3"), "specversion is '0.3'"),
            (raw(ce_specversion="1.0", ce_id="1"), "missing required attribute(s) source, type"),
            (structured(version="v2"), "version is not an integer"),
        ],
    )
    def test_entries_that_are_not_cloudevents_say_why(
        self, entry: dict[bytes, bytes], reason: str
    ) -> None:
        """Anything but a CloudEvent 1.x raises MalformedMessage naming the problem."""
        with pytest.raises(MalformedMessage) as caught:
            OPENERS["cloudevents"](entry)
        assert reason in str(caught.value)

    def test_dapr_reads_the_cloudevent_in_data(self) -> None:
        """Dapr's layout: `data` holds a CloudEvent with Dapr's own extra attributes."""
        opened = OPENERS["dapr"](
            structured(topic="orders", pubsubname="redis-pubsub", traceparent="00-ab", data=[1])
        )
        assert (opened.type, opened.data, opened.attributes["topic"]) == (
            "order.paid",
            [1],
            "orders",
        )

    def test_dapr_raw_payload_is_refused(self) -> None:
        """A rawPayload entry is not a CloudEvent: the reason names Dapr."""
        with pytest.raises(MalformedMessage, match="not a Dapr CloudEvent"):
            OPENERS["dapr"](raw(data='{"n": 1}'))


class TestFastStream:
    def test_binary_format_headers_map_to_the_message(self) -> None:
        """type/key/version headers, correlation_id as event id, JSON body as data."""
        entry = {
            b"__data__": faststream_binary(
                b'{"n": 1}',
                {
                    "correlation_id": "c-1",
                    "content-type": "application/json",
                    "type": "order.paid",
                    "key": "order-1",
                    "version": "4",
                },
            )
        }
        opened = OPENERS["faststream"](entry)
        assert (opened.type, opened.key, opened.event_id, opened.version) == (
            "order.paid",
            "order-1",
            "c-1",
            4,
        )
        assert opened.data == {"n": 1}

    def test_message_id_header_wins_and_bytes_stay_bytes(self) -> None:
        """message_id is the event id when set; a body without content-type stays bytes."""
        entry = {
            b"__data__": faststream_binary(b"\x00\x01", {"message_id": "m", "correlation_id": "c"})
        }
        opened = OPENERS["faststream"](entry)
        assert (opened.event_id, opened.data) == ("m", b"\x00\x01")

    def test_legacy_json_format(self) -> None:
        """FastStream's JSON format: {"data": body, "headers": {...}}."""
        doc = {"data": '{"n": 2}', "headers": {"content-type": "application/json", "type": "t"}}
        opened = OPENERS["faststream"]({b"__data__": json.dumps(doc).encode()})
        assert (opened.type, opened.data) == ("t", {"n": 2})

    @pytest.mark.parametrize(
        ("entry", "reason"),
        [
            ({b"type": b"t"}, "no __data__ field"),
            ({b"__data__": IDENTITY + b"\x00\x01\x00"}, "damaged"),
            ({b"__data__": b"plain bytes"}, "neither its binary format"),
            ({b"__data__": faststream_binary(b"{", {"content-type": "application/json"})}, "JSON"),
        ],
    )
    def test_what_is_not_faststream_says_why(self, entry: dict[bytes, bytes], reason: str) -> None:
        """A missing field, a cut-short binary, an unknown body: MalformedMessage with why."""
        with pytest.raises(MalformedMessage) as caught:
            OPENERS["faststream"](entry)
        assert reason in str(caught.value)


class TestRouting:
    async def test_type_filter_uses_the_envelope_type(self) -> None:
        """A handler for order.paid gets a CloudEvent of that type; others are skipped."""
        seen: list[tuple[str | None, Any]] = []

        @handler(stream="orders", types=["order.paid"], envelope="cloudevents")
        async def paid(msg: Message) -> None:
            seen.append((msg.type, msg.data))

        ok = await deliver(
            paid,
            make_message("orders", fields=cloudevent_fields("order.paid", {"n": 1}, source="/t")),
        )
        skipped = await deliver(
            paid, make_message("orders", fields=cloudevent_fields("other", {}, source="/t"))
        )
        assert (ok.outcome, skipped.outcome) == ("ok", "skipped")
        assert seen == [("order.paid", {"n": 1})]

    async def test_an_entry_the_envelope_cannot_read_is_dead_lettered(self) -> None:
        """A syncworker-layout entry on a faststream route: dead letter, handler not called."""
        calls: list[Message] = []

        @handler(stream="orders", types=["order.paid"], envelope="faststream")
        async def paid(msg: Message) -> None:
            calls.append(msg)

        result = await deliver(paid, type="order.paid", data={})
        assert result.outcome == "dead_letter" and isinstance(result.error, MalformedMessage)
        assert "no __data__ field" in str(result.error) and calls == []

    async def test_the_default_envelope_reads_fields_as_before(self) -> None:
        """syncworker routes see the entry's own fields; the message is a plain Message."""
        seen: list[Message] = []

        @handler(stream="orders")
        async def any_(msg: Message) -> None:
            seen.append(msg)

        await deliver(any_, type="t", key="k", data={"a": 1})
        assert type(seen[0]) is Message and (seen[0].type, seen[0].key) == ("t", "k")

    def test_handlers_of_one_stream_must_share_an_envelope(self) -> None:
        """Two envelopes on one stream is a configuration error naming both."""

        @handler(stream="orders", envelope="dapr")
        async def a(msg: Message) -> None: ...

        @handler(stream="orders")
        async def b(msg: Message) -> None: ...

        with pytest.raises(ConfigError, match="different envelopes"):
            validate([a, b])

    def test_unknown_envelope_is_refused(self) -> None:
        """@handler(envelope=...) accepts only the known envelopes."""
        with pytest.raises(ValueError, match="unknown envelope"):
            handler(stream="orders", envelope="kafka")  # type: ignore[arg-type]
