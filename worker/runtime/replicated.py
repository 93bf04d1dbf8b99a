"""Writes a failover cannot take back: commands on one key's primary, then WAIT on the same
connection until a replica has them.

Replication is asynchronous: a primary answers before its replicas hold the write, and a
replica promoted after the primary died lacks the last moments' writes. For a partition lease
that means two owners: a lease taken (or renewed) on the old primary and lost in the failover
is free on the promoted replica, so a peer takes it while the old owner still trusts its own
(until three quarters of `lease_ttl` after it sent the write), and both run the partition,
each with a share of its entries. A lease is therefore trusted only once a replica confirmed
it (`worker.runtime.leases`); WAIT counts the replicas that hold every write made earlier on
its connection, hence one connection for the writes and the WAIT.

A primary with no replica to wait for (a single Redis, or a shard whose replicas are gone)
cannot lose the write to a failover, so nothing is waited for there. On a cluster the
primary's own CLUSTER NODES says whether it has replicas: every replica the cluster knows and
has not marked failed, even one whose link is down, since it could be promoted (the slot map
redis-py keeps is no guide: CLUSTER SLOTS leaves out a replica until its replication offset
has been gossiped). Elsewhere ROLE lists the connected replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster

Command = tuple[Any, ...]


async def write_confirmed(
    redis: Redis, key: str, commands: Sequence[Command], wait_s: float
) -> tuple[list[Any], bool]:
    """Send `commands` (all in `key`'s slot) to its primary on one connection, then WAIT 1.

    Returns:
        the commands' replies, and whether a replica holds them (True when the primary has
        no replica that a failover could promote).

    Raises:
        the first command's error (a connection error, MOVED after a failover, ...); on a
        cluster, the client is first sent to find the key's primary again.
    """
    timeout_ms = max(int(wait_s * 1000), 1)
    if isinstance(redis, RedisCluster):
        return await _on_cluster(redis, key, commands, timeout_ms)
    role: Any = await redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
    replicated = bool(role[2]) if role and role[0] in (b"master", "master") else False
    pipe = redis.pipeline(transaction=False)  # one connection for the writes and the WAIT
    for command in commands:
        pipe.execute_command(*command)
    if replicated:
        pipe.execute_command("WAIT", 1, timeout_ms)
    replies = await pipe.execute()
    if not replicated:
        return list(replies), True
    return list(replies[:-1]), int(replies[-1]) >= 1


async def _on_cluster(
    redis: RedisCluster, key: str, commands: Sequence[Command], timeout_ms: int
) -> tuple[list[Any], bool]:
    sent = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
    try:
        node = redis.get_node_from_key(key)
        assert node is not None
        asked = PipelineCommand(0, "CLUSTER NODES")
        await node.execute_pipeline([asked])
        if isinstance(asked.result, BaseException):
            raise asked.result
        replicated = _replicas_of_myself(asked.result) > 0
        if replicated:
            sent.append(PipelineCommand(len(sent), "WAIT", 1, timeout_ms))
        await node.execute_pipeline(sent)
        for command in sent:
            if isinstance(command.result, BaseException):
                raise command.result
    except Exception:
        # A failover or a resharding: the client's own path for this key follows the
        # redirection or reconnects, and maps the slot again for the next turn.
        await _remap(redis, key)
        raise
    replies: list[Any] = [c.result for c in sent]
    if not replicated:
        return replies, True
    return replies[:-1], int(replies[-1]) >= 1


def _replicas_of_myself(nodes: Any) -> int:
    """How many replicas the answering primary has in the cluster's view (CLUSTER NODES,
    as redis-py parses it), connected or not: any of them but a failed one could be
    promoted, even one whose link is down (it then has less than the primary)."""
    mine = [n["node_id"] for n in nodes.values() if "myself" in n["flags"].split(",")]
    if not mine:
        return 0
    return sum(
        1
        for n in nodes.values()
        if n["master_id"] == mine[0] and "fail" not in n["flags"].split(",")
    )


async def write_confirmed_each(
    redis: Redis, writes: Sequence[tuple[str, Command]], wait_s: float
) -> list[tuple[Any, bool]]:
    """`write_confirmed` for one command per key, keys of any slots: one connection and one
    WAIT per primary, the primaries at once.

    Returns:
        per write, in order: its reply and whether a replica holds it.

    Raises:
        the first error of any primary, once the replies of the others are in (the caller
        keeps what they confirmed: `replies_so_far` of the error).
    """
    groups: dict[str, list[int]] = {}
    for index, (key, _) in enumerate(writes):
        groups.setdefault(_primary_name(redis, key), []).append(index)
    order = list(groups.values())
    results: list[Any] = await asyncio.gather(
        *(
            write_confirmed(redis, writes[ix[0]][0], [writes[i][1] for i in ix], wait_s)
            for ix in order
        ),
        return_exceptions=True,
    )
    out: list[tuple[Any, bool] | None] = [None] * len(writes)
    error: BaseException | None = None
    for ix, result in zip(order, results, strict=True):
        if isinstance(result, BaseException):
            error = error or result
            continue
        replies, confirmed = result
        for i, reply in zip(ix, replies, strict=True):
            out[i] = (reply, confirmed)
    if error is not None:
        raise PartlyWritten(out) from error
    return [r for r in out if r is not None]


class PartlyWritten(Exception):
    """Some primaries failed; `replies` holds (reply, confirmed) of the writes that did not
    (None for the others), and the cause is the first failure."""

    def __init__(self, replies: list[tuple[Any, bool] | None]) -> None:
        super().__init__("some primaries did not answer")
        self.replies = replies


def _primary_name(redis: Redis, key: str) -> str:
    if isinstance(redis, RedisCluster):
        try:
            node = redis.get_node_from_key(key)
        except Exception:  # unmapped: a group of its own, whose write maps it
            return f"?{key}"
        return node.name if node is not None else f"?{key}"
    return ""


async def _remap(redis: RedisCluster, key: str) -> None:
    with contextlib.suppress(Exception):  # the caller raises the original error
        await redis.exists(key)
