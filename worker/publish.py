"""Publishing events in the field convention that handlers expect (type, key, data, ...), or
as CloudEvents for consumers in other frameworks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from worker.partitions import check_partitioned_name, stream_for


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
) -> dict[str, str]:
    """One event as a CloudEvent 1.0 in structured mode: field `data` holding the JSON event.

    Structured rather than binary, because it is the layout Dapr's Redis pub/sub writes and
    reads too, and one field keeps the event whole for any JSON reader. `key` becomes the
    `partitionkey` extension (the CloudEvents partitioning extension), `version` a `version`
    extension; `id` is `event_id`, or a new UUID (CloudEvents requires one).

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
        partitions: logical stream -> partition count, for partitioned streams
            (`worker.partitions`): an event goes to the partition of its `key`
            (`{orders:3}`), keyless events to partition 0.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int | None = None,
        envelope: Literal["syncworker", "cloudevents"] = "syncworker",
        source: str = "syncworker",
        partitions: Mapping[str, int] | None = None,
    ) -> None:
        if envelope not in ("syncworker", "cloudevents"):
            raise ValueError(f"Publisher writes syncworker or cloudevents, not {envelope!r}")
        self.redis = redis
        self.maxlen = maxlen
        self.envelope = envelope
        self.source = source
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
        partitions: int | None = None,
    ) -> str:
        """Append one event and return its entry id.

        `stream` is a logical stream: with `partitions` (here, or for the stream in the
        constructor) the event goes to the partition of its key."""
        if self.envelope == "cloudevents":
            fields = cloudevent_fields(
                type, data, source=self.source, key=key, event_id=event_id, version=version
            )
        else:
            fields = event_fields(type, data, key=key, event_id=event_id, version=version)
        count = partitions if partitions is not None else self.partitions.get(stream)
        if count:
            check_partitioned_name(stream, count)
        entry_id = await self.redis.xadd(
            stream_for(stream, key, count),
            dict(fields),  # type: ignore[arg-type]  # redis-py types the mapping invariantly
            maxlen=self.maxlen,
            approximate=self.maxlen is not None,
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def publish(redis: Redis, stream: str, type: str, data: Any = None, **kwargs: Any) -> str:
    """Append one event to `stream`; see `Publisher.publish` for the arguments."""
    return await Publisher(redis).publish(stream, type, data, **kwargs)
