"""Publishing events in the field convention that handlers expect (type, key, data, ...), or
as CloudEvents for consumers in other frameworks."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

_OTEL = "opentelemetry.trace"
"""Imported by every application that traces: until it is, publishing never loads it."""


def event_fields(
    type: str,
    data: Any = None,
    *,
    key: str | None = None,
    event_id: str | None = None,
    version: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The stream fields of one event: `type`, `data` as JSON, and the optional ones given.

    Raises:
        TypeError: `data` cannot be serialised to JSON.
    """
    fields: dict[str, str] = {"type": type}
    if key is not None:
        fields["key"] = key
    # Always encoded, so a str becomes a JSON string: consumers can rely on `data` being JSON.
    fields["data"] = json.dumps(data, separators=(",", ":"))
    if event_id is not None:
        fields["event_id"] = event_id
    if version is not None:
        fields["version"] = str(int(version))
    if extra:
        fields.update(extra)
    return fields


def cloudevent_fields(
    type: str,
    data: Any = None,
    *,
    source: str,
    key: str | None = None,
    event_id: str | None = None,
    version: int | None = None,
    extensions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One event as a CloudEvent 1.0 in structured mode: field `data` holding the JSON event.

    Structured rather than binary, because it is the layout Dapr's Redis pub/sub writes and
    reads too, and one field keeps the event whole for any JSON reader. `key` becomes the
    `partitionkey` extension (the CloudEvents partitioning extension), `version` a `version`
    extension; `id` is `event_id`, or a new UUID (CloudEvents requires one). `extensions` are
    further extension attributes, such as the distributed-tracing `traceparent`.

    Raises:
        TypeError: `data` cannot be serialised to JSON.
    """
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
    if key is not None:
        event["partitionkey"] = key
    if version is not None:
        event["version"] = int(version)
    if extensions:
        event.update(extensions)
    return {"data": json.dumps(event, separators=(",", ":"))}


class Publisher:
    """Appends events to streams for producers.

    Args:
        redis: an asyncio Redis client.
        maxlen: trim each stream to about this many entries (XADD MAXLEN ~). None keeps
            everything. Note that length-based trimming can delete entries a slow consumer
            group has not processed yet; `syncworker trim` is the safe alternative.
        envelope: `syncworker` writes this runtime's fields (`event_fields`); `cloudevents`
            writes structured CloudEvents (`cloudevent_fields`), which routes with
            `envelope = "cloudevents"` or `"dapr"`, and Dapr itself, read.
        source: the CloudEvents `source` attribute (a URI-reference naming the producer).
        tracer_provider: where the PRODUCER spans go (`worker.tracing`); None for the global
            provider. Once the application has imported OpenTelemetry, each event carries the
            current trace context (`traceparent`, ...), within a `send <stream>` span when a
            provider is set; otherwise OpenTelemetry is never loaded.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int | None = None,
        envelope: Literal["syncworker", "cloudevents"] = "syncworker",
        source: str = "syncworker",
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if envelope not in ("syncworker", "cloudevents"):
            raise ValueError(f"Publisher writes syncworker or cloudevents, not {envelope!r}")
        self.redis = redis
        self.maxlen = maxlen
        self.envelope = envelope
        self.source = source
        self.tracer_provider = tracer_provider

    async def publish(
        self,
        stream: str,
        type: str,
        data: Any = None,
        *,
        key: str | None = None,
        event_id: str | None = None,
        version: int | None = None,
    ) -> str:
        """Append one event and return its entry id."""
        if _OTEL not in sys.modules and self.tracer_provider is None:
            return await self._add(stream, type, data, key, event_id, version, None)
        from worker.tracing import sending

        with sending(stream, self.tracer_provider) as (span, trace_fields):
            entry_id = await self._add(stream, type, data, key, event_id, version, trace_fields)
            if span is not None:
                span.set_attribute("messaging.message.id", entry_id)
        return entry_id

    async def _add(
        self,
        stream: str,
        type: str,
        data: Any,
        key: str | None,
        event_id: str | None,
        version: int | None,
        trace_fields: Mapping[str, str] | None,
    ) -> str:
        if self.envelope == "cloudevents":
            fields = cloudevent_fields(
                type,
                data,
                source=self.source,
                key=key,
                event_id=event_id,
                version=version,
                extensions=trace_fields,
            )
        else:
            fields = event_fields(
                type, data, key=key, event_id=event_id, version=version, extra=trace_fields
            )
        entry_id = await self.redis.xadd(
            stream,
            dict(fields),  # type: ignore[arg-type]  # redis-py types the mapping invariantly
            maxlen=self.maxlen,
            approximate=self.maxlen is not None,
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def publish(redis: Redis, stream: str, type: str, data: Any = None, **kwargs: Any) -> str:
    """Append one event to `stream`; see `Publisher.publish` for the arguments."""
    return await Publisher(redis).publish(stream, type, data, **kwargs)
