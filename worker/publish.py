"""Publishing events in the field convention that handlers expect (type, key, data, ...)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis


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


class Publisher:
    """Appends events to streams for producers.

    Args:
        redis: an asyncio Redis client.
        maxlen: trim each stream to about this many entries (XADD MAXLEN ~). None keeps
            everything. Note that length-based trimming can delete entries a slow consumer
            group has not processed yet; `syncworker trim` is the safe alternative.
    """

    def __init__(self, redis: Redis, *, maxlen: int | None = None) -> None:
        self.redis = redis
        self.maxlen = maxlen

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
        fields = event_fields(type, data, key=key, event_id=event_id, version=version)
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
