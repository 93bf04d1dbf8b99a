"""Publishing events in the field convention that handlers expect (type, key, data, ...), or
as CloudEvents for consumers in other frameworks."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from redis.asyncio import Redis

from worker.cluster_wait import write_and_wait
from worker.errors import NotReplicated
from worker.partitions import check_partitioned_name, stream_for
from worker.topology import is_cluster

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
    schema_version: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The stream fields of one event: `type`, `data` as JSON, and the optional ones given.

    `version` is the entity's version (it orders an entity's changes); `schema_version` the
    version of the payload's shape, which a handler with `Versions` models reads
    (`worker.versions`).

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
    if schema_version is not None:
        fields["schema_version"] = str(int(schema_version))
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
    schema_version: int | None = None,
    extensions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One event as a CloudEvent 1.0 in structured mode: field `data` holding the JSON event.

    Structured mode is the layout Dapr's Redis pub/sub writes and reads too, and one field
    keeps the event whole for any JSON reader. `key` becomes the `partitionkey` extension (the
    CloudEvents partitioning extension), `version` a `version` extension, `schema_version` a
    `schemaversion` extension; `id` is `event_id`, or a new UUID (CloudEvents requires one).
    `extensions` are further extension attributes, such as the distributed-tracing
    `traceparent`.

    Raises:
        TypeError: `data` cannot be serialised to JSON.
    """
    event = _attributes(type, source, key, event_id, version, schema_version, extensions)
    event["datacontenttype"] = "application/json"
    event["data"] = data
    return {"data": json.dumps(event, separators=(",", ":"))}


def cloudevent_binary_fields(
    type: str,
    data: Any = None,
    *,
    source: str,
    key: str | None = None,
    event_id: str | None = None,
    version: int | None = None,
    schema_version: int | None = None,
    extensions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One event as a CloudEvent 1.0 in binary mode: a `ce_` field per attribute.

    The layout of the CloudEvents Kafka binding: `ce_specversion`, `ce_id`, `ce_source`,
    `ce_type`, `ce_time` and the extensions (`ce_partitionkey`, `ce_version`,
    `ce_schemaversion`) as fields of their own, the payload as JSON in `data` and its media
    type in `content-type`. Readers that filter or route on attributes see them without
    parsing the payload. Dapr reads structured mode only (`cloudevent_fields`).

    Raises:
        TypeError: `data` cannot be serialised to JSON.
    """
    attributes = _attributes(type, source, key, event_id, version, schema_version, extensions)
    fields = {f"ce_{name}": str(value) for name, value in attributes.items()}
    fields["content-type"] = "application/json"
    fields["data"] = json.dumps(data, separators=(",", ":"))
    return fields


def _attributes(
    type: str,
    source: str,
    key: str | None,
    event_id: str | None,
    version: int | None,
    schema_version: int | None,
    extensions: Mapping[str, str] | None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if key is not None:
        event["partitionkey"] = key
    if version is not None:
        event["version"] = int(version)
    if schema_version is not None:
        event["schemaversion"] = int(schema_version)
    if extensions:
        event.update(extensions)
    return event


PublishEnvelope = Literal["syncworker", "cloudevents", "cloudevents-binary"]
"""The layouts `Publisher` writes."""

WRITERS = {"cloudevents": cloudevent_fields, "cloudevents-binary": cloudevent_binary_fields}


class Publisher:
    """Appends events to streams for producers.

    Args:
        redis: an asyncio Redis client.
        maxlen: trim each stream to about this many entries (XADD MAXLEN ~). None keeps
            everything. Note that length-based trimming can delete entries a slow consumer
            group has not processed yet; `syncworker trim` is the safe alternative.
        envelope: `syncworker` writes this runtime's fields (`event_fields`); `cloudevents`
            writes structured CloudEvents (`cloudevent_fields`), which routes with
            `envelope = "cloudevents"` or `"dapr"`, and Dapr itself, read;
            `cloudevents-binary` writes binary-mode CloudEvents (`cloudevent_binary_fields`),
            which `envelope = "cloudevents"` routes read.
        source: the CloudEvents `source` attribute (a URI-reference naming the producer).
        tracer_provider: where the PRODUCER spans go (`worker.tracing`); None for the global
            provider. Once the application has imported OpenTelemetry, each event carries the
            current trace context (`traceparent`, ...), within a `send <stream>` span when a
            provider is set; otherwise OpenTelemetry is never loaded.
        partitions: logical stream -> partition count, for partitioned streams
            (`worker.partitions`): an event goes to the partition of its `key`
            (`{orders:3}`), keyless events to partition 0.
        wait_replicas: after each XADD, wait until this many replicas hold it (Redis `WAIT`),
            so that a failover cannot lose an event the publisher was told about. 0 (the
            default) returns as soon as the primary has it: Redis replication is
            asynchronous, and a primary that dies before replicating takes the entry along.
            On a Redis Cluster the WAIT goes to the primary of the entry's slot (each
            partition's own, for a partitioned stream), on the XADD's connection.
        wait_timeout: seconds to wait for the replicas before raising `NotReplicated`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int | None = None,
        envelope: PublishEnvelope = "syncworker",
        source: str = "syncworker",
        tracer_provider: TracerProvider | None = None,
        partitions: Mapping[str, int] | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if envelope not in get_args(PublishEnvelope):
            raise ValueError(
                f"Publisher writes {', '.join(get_args(PublishEnvelope))}, not {envelope!r}"
            )
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout > 0")
        self.redis = redis
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.maxlen = maxlen
        self.envelope = envelope
        self.source = source
        self.tracer_provider = tracer_provider
        self.partitions = dict(partitions or {})
        for stream, count in self.partitions.items():
            check_partitioned_name(stream, count)

    async def publish(
        self,
        stream: str,
        type: str,
        data: Any = None,
        *,
        key: str | None = None,
        event_id: str | None = None,
        version: int | None = None,
        schema_version: int | None = None,
        partitions: int | None = None,
    ) -> str:
        """Append one event and return its entry id.

        `stream` is a logical stream: with `partitions` (here, or for the stream in the
        constructor) the event goes to the partition of its key.

        Raises:
            NotReplicated: `wait_replicas` replicas did not confirm the entry in time. The
                entry is on the primary and will usually reach the replicas later; publishing
                it again (same `event_id`) is safe for consumers that deduplicate.
        """
        count = partitions if partitions is not None else self.partitions.get(stream)
        if count:
            check_partitioned_name(stream, count)
        target = stream_for(stream, key, count)
        parts: dict[str, Any] = {
            "key": key,
            "event_id": event_id,
            "version": version,
            "schema_version": schema_version,
        }
        if _OTEL not in sys.modules and self.tracer_provider is None:
            return await self._add(target, type, data, parts, None)
        from worker.tracing import sending

        with sending(target, self.tracer_provider) as (span, trace_fields):
            entry_id = await self._add(target, type, data, parts, trace_fields)
            if span is not None:
                span.set_attribute("messaging.message.id", entry_id)
        return entry_id

    async def _add(
        self,
        stream: str,
        type: str,
        data: Any,
        parts: dict[str, Any],
        trace_fields: Mapping[str, str] | None,
    ) -> str:
        if self.envelope == "syncworker":
            fields = event_fields(type, data, **parts, extra=trace_fields)
        else:
            writer = WRITERS[self.envelope]
            fields = writer(type, data, source=self.source, **parts, extensions=trace_fields)
        if self.wait_replicas:
            return await self._add_replicated(stream, fields)
        entry_id = await self.redis.xadd(
            stream,
            dict(fields),  # type: ignore[arg-type]  # redis-py types the mapping invariantly
            maxlen=self.maxlen,
            approximate=self.maxlen is not None,
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def _add_replicated(self, stream: str, fields: dict[str, str]) -> str:
        """XADD, then WAIT on the same connection: WAIT counts the replicas that hold this
        client's own writes, so the two must travel together (a pipeline, not a pool). On a
        cluster, one connection to the primary of the stream's slot (`worker.cluster_wait`)."""
        if is_cluster(self.redis):
            trim = [] if self.maxlen is None else ["MAXLEN", "~", self.maxlen]
            words = [item for pair in fields.items() for item in pair]
            raw_id, acknowledged = await write_and_wait(
                self.redis,
                stream,
                ["XADD", stream, *trim, "*", *words],
                self.wait_replicas,
                self.wait_timeout,
            )
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    stream,
                    dict(fields),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=self.maxlen is not None,
                )
                pipe.execute_command("WAIT", self.wait_replicas, int(self.wait_timeout * 1000))
                raw_id, acknowledged = await pipe.execute()
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        if int(acknowledged) < self.wait_replicas:
            raise NotReplicated(stream, entry_id, int(acknowledged), self.wait_replicas)
        return entry_id


async def publish(redis: Redis, stream: str, type: str, data: Any = None, **kwargs: Any) -> str:
    """Append one event to `stream`; see `Publisher.publish` for the arguments."""
    return await Publisher(redis).publish(stream, type, data, **kwargs)
