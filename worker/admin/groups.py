"""Reading the state of consumer groups from Redis, for `syncworker status` and the gauges.

One pipeline per stream (XLEN, XINFO GROUPS, XPENDING summary, XLEN of the dead-letter
stream, and optionally XINFO CONSUMERS) keeps a status of many streams to a few round trips.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker import keys
from worker.admin.lag import estimate_lag
from worker.connection import text
from worker.topology import is_cluster


@dataclass(slots=True)
class ConsumerState:
    """One consumer of a group, as XINFO CONSUMERS reports it."""

    name: str
    pending: int
    idle_s: float
    """Seconds since the consumer last talked to Redis (read, claim or heartbeat)."""


@dataclass(slots=True)
class GroupState:
    """One group on one stream.

    `lag` comes from XINFO GROUPS; when Redis reports none (after a restart from AOF, or an
    XDEL between the group's position and the end of the stream) it is counted instead and
    `lag_estimated` is True (see `worker.admin.lag`). It is None only for a missing group;
    `exists` is False then.
    """

    stream: str
    group: str
    dead_letter_stream: str
    exists: bool = False
    length: int = 0
    lag: int | None = 0
    pending: int = 0
    oldest_pending_id: str | None = None
    oldest_pending_age_s: float | None = None
    last_delivered_id: str | None = None
    dead_letter_length: int = 0
    consumers: list[ConsumerState] | None = field(default=None)
    lag_estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def id_age_s(entry_id: str, now_ms: float | None = None) -> float:
    """Seconds since Redis added the entry with this id (from the id's millisecond part)."""
    now_ms = time.time() * 1000.0 if now_ms is None else now_ms
    return max(now_ms - int(entry_id.partition("-")[0]), 0.0) / 1000.0


async def read_group_states(
    redis: Redis,
    streams: list[str] | tuple[str, ...],
    group: str,
    dead_letter_suffix: str,
    *,
    consumers: bool = False,
    all_groups: bool = False,
) -> list[GroupState]:
    """The state of `group` (or of every group, with `all_groups`) on each stream.

    A stream without the group yields a state with `exists=False`, so callers can tell a
    missing group from an idle one.
    """
    states: list[GroupState] = []
    for stream in streams:
        states.extend(
            await _stream_states(redis, stream, group, dead_letter_suffix, consumers, all_groups)
        )
    return states


async def _stream_states(
    redis: Redis,
    stream: str,
    group: str,
    suffix: str,
    consumers: bool,
    all_groups: bool,
) -> list[GroupState]:
    dead_letter_stream = keys.derived(stream, suffix, is_cluster(redis))
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xlen(dead_letter_stream)
    pipe.xinfo_groups(stream)
    length, dead_length, infos = await pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):
        raise length
    if isinstance(infos, ResponseError):  # no such key: the stream does not exist yet
        infos = []
    elif isinstance(infos, Exception):
        raise infos
    dead_length = 0 if isinstance(dead_length, Exception) else int(dead_length)
    by_name = {text(info["name"]): info for info in infos}
    names = sorted(by_name) if all_groups else [group]
    states: list[GroupState] = []
    for name in names:
        state = GroupState(stream, name, dead_letter_stream, length=int(length))
        state.dead_letter_length = dead_length
        info = by_name.get(name)
        if info is not None:
            await _fill(redis, state, info, consumers)
        else:
            state.lag = None
        states.append(state)
    return states


async def _fill(redis: Redis, state: GroupState, info: dict[Any, Any], consumers: bool) -> None:
    state.exists = True
    lag = info.get("lag")
    state.lag = None if lag is None else int(lag)
    state.pending = int(info["pending"])
    state.last_delivered_id = text(info["last-delivered-id"])
    if state.lag is None:
        try:
            state.lag = await estimate_lag(redis, state.stream, state.last_delivered_id)
            state.lag_estimated = True
        except ResponseError:  # e.g. an ACL user without scripts: no lag, as Redis says
            pass
    pipe = redis.pipeline(transaction=False)
    pipe.xpending(state.stream, state.group)
    if consumers:
        pipe.xinfo_consumers(state.stream, state.group)
    results = await pipe.execute(raise_on_error=False)
    summary = results[0]
    if not isinstance(summary, Exception) and summary["pending"]:
        state.pending = int(summary["pending"])
        state.oldest_pending_id = text(summary["min"])
        state.oldest_pending_age_s = round(id_age_s(state.oldest_pending_id), 3)
    if consumers and not isinstance(results[1], Exception):
        state.consumers = [
            ConsumerState(text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000.0)
            for c in results[1]
        ]
