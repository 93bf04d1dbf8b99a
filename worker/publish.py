"""Publishing events in the field convention that handlers expect (type, key, data, ...), or
as CloudEvents for consumers in other frameworks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from worker.errors import NotReplicated


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
        wait_replicas: after each XADD, wait until this many replicas hold it (Redis `WAIT`),
            so that a failover cannot lose an event the publisher was told about. 0 (the
            default) returns as soon as the primary has it: Redis replication is
            asynchronous, and a primary that dies before replicating takes the entry along.
        wait_timeout: seconds to wait for the replicas before raising `NotReplicated`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int | None = None,
        envelope: Literal["syncworker", "cloudevents"] = "syncworker",
        source: str = "syncworker",
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if envelope not in ("syncworker", "cloudevents"):
            raise ValueError(f"Publisher writes syncworker or cloudevents, not {envelope!r}")
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout > 0")
        self.redis = redis
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.maxlen = maxlen
        self.envelope = envelope
        self.source = source

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
        """Append one event and return its entry id.

        Raises:
            NotReplicated: `wait_replicas` replicas did not confirm the entry in time. The
                entry is on the primary and will usually reach the replicas later; publishing
                it again (same `event_id`) is safe for consumers that deduplicate.
        """
        if self.envelope == "cloudevents":
            fields = cloudevent_fields(
                type, data, source=self.source, key=key, event_id=event_id, version=version
            )
        else:
            fields = event_fields(type, data, key=key, event_id=event_id, version=version)
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
        client's own writes, so the two must travel together (a pipeline, not a pool)."""
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
