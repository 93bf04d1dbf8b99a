"""A write followed by WAIT on one connection to the primary of a key's slot (Redis Cluster).

WAIT counts the replicas that hold the writes *of its own connection*, so it must follow the
write on that connection. redis-py's cluster client takes a connection from the node's pool
for each command, and its pipeline does not promise to keep two commands on one; so here the
client only names the node (its slot map, as for any command), one connection is taken from
that node's pool, and the write and WAIT are sent on it pipelined, in one round trip.

What can go wrong, and what is done about it:

- MOVED (the slot has a new owner after a failover or a resharding): the client's slot map is
  patched as redis-py does, and the pair goes to the new owner;
- ASK (the slot is being migrated): ASKING, the write and WAIT go to the importing node, on
  one connection (WAIT then counts that node's replicas, which is where the write is);
- TRYAGAIN, CLUSTERDOWN, an uncovered slot: a short pause, the slot map read again, again;
- NOSCRIPT for an EVALSHA: SCRIPT LOAD is sent ahead on the same connection, again;
- the connection lost or refused before the write's reply came back (the node went away):
  the slot map is read again and the pair sent again, at most the client's retry count
  (`RedisCluster(retry=...)`, 3 by default). The write may have been applied before the
  connection dropped: a retried XADD then appends the event a second time, exactly as
  redis-py's own cluster retries of a plain XADD do. Consumers that deduplicate on
  `event_id` (the relay with `dedup = "event_id"`, the SQL inbox, your own) apply it once;
  the projection's version guard drops the copy. A retried effect script finds its marker
  and writes nothing twice.
- the connection lost after the write's reply (while WAIT waits): the write is not sent
  again; no replica is counted, so the caller reports it as not confirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIRECTIONS = 16
"""Most MOVED/ASK/TRYAGAIN turns for one write, as redis-py's `RedisClusterRequestTTL`."""

_GONE = (RedisConnectionError, RedisTimeoutError, OSError)


class _Gone(Exception):
    """The node went away before the write's reply was read."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def write_and_wait(
    redis: Redis,
    key: str,
    command: Sequence[Any],
    replicas: int,
    timeout: float,
    *,
    script: str | None = None,
) -> tuple[Any, int]:
    """Send `command` (a write of `key`'s slot) then `WAIT replicas timeout` on one
    connection to that slot's primary; the write's reply and how many replicas confirmed it.

    Args:
        redis: a cluster client (`worker.topology.is_cluster`).
        command: the command's words, e.g. `("XADD", stream, "*", "type", "t")`.
        script: with an EVALSHA `command`, the script's source, loaded if the node lacks it.

    Raises:
        ResponseError: Redis refused the write (not a redirection), or WAIT.
        ConnectionError, TimeoutError: the slot's primary could not be reached, retries
            spent.
    """
    cluster: Any = redis
    retries = cluster.retry.get_retries()
    wait = ("WAIT", replicas, max(1, round(timeout * 1000)))
    asking: Any = None
    load = False
    for _ in range(REDIRECTIONS):
        try:
            await cluster.initialize()  # a no-op unless the slot map was dropped
            node = asking or cluster.get_node_from_key(key)
        except SlotNotCoveredError:
            await _refresh(cluster, 0.25)
            continue
        prefix: list[tuple[Any, ...]] = []
        if asking is not None:
            prefix.append(("ASKING",))
        if load:
            prefix.append(("SCRIPT", "LOAD", script))
        asking, load = None, False
        commands = [*prefix, tuple(command), wait]
        try:
            *_, reply, acknowledged = await _pipelined(node, commands, timeout)
        except _Gone as gone:
            if retries <= 0:
                raise gone.cause from None
            retries -= 1
            await _forget(cluster, node)
            continue
        if isinstance(reply, MovedError):
            await cluster.nodes_manager.move_slot(reply)
        elif isinstance(reply, AskError):
            asking = cluster.get_node(host=reply.host, port=reply.port)
            if asking is None:
                await _refresh(cluster, 0)
        elif isinstance(reply, NoScriptError) and script is not None:
            load = True
        elif isinstance(reply, (TryAgainError, ClusterDownError)):
            await _refresh(cluster, 0.25 if isinstance(reply, ClusterDownError) else 0.05)
        elif isinstance(reply, Exception):
            raise reply
        elif isinstance(acknowledged, Exception):
            raise acknowledged  # WAIT refused (an ACL without +wait): the write is done
        else:
            return reply, int(acknowledged)
    raise ClusterError(f"{key}: still redirected after {REDIRECTIONS} tries")


async def _pipelined(node: Any, commands: list[tuple[Any, ...]], timeout: float) -> list[Any]:
    """Every command on one connection of `node`, in one write; their replies (a refusal as
    its exception). WAIT's reply, the last, is given `timeout` on top of the socket timeout.

    Raises:
        _Gone: the connection failed before the reply of the write (the second-to-last).
    """
    connection = node.acquire_connection()
    replies: list[Any] = []
    try:
        await node.disconnect_if_needed(connection)
        await connection.send_packed_command(connection.pack_commands(commands))
        for _ in commands[:-1]:
            try:
                replies.append(await connection.read_response())
            except ResponseError as refused:
                replies.append(refused)
        read_timeout = (connection.socket_timeout or 0) + timeout + 1
        try:
            acknowledged = await connection.read_response(timeout=read_timeout)
        except ResponseError as refused:
            acknowledged = refused
        if acknowledged is None:  # the read timed out, the reply unread: drop the connection
            await connection.disconnect()
            acknowledged = 0
        replies.append(acknowledged)
        return replies
    except _GONE as exc:
        if len(replies) >= len(commands) - 1:  # the write's reply is in: WAIT's was lost
            return [*replies, 0]
        raise _Gone(exc) from exc
    finally:
        node.release(connection)


async def _forget(cluster: Any, node: Any) -> None:
    """What redis-py does when a node stops answering: its connections are renewed, it is
    asked last, and the slot map is read again before the next command."""
    node.update_active_connections_for_reconnect()
    await node.disconnect_free_connections()
    cluster.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
    await _refresh(cluster, 0.25)


async def _refresh(cluster: Any, pause: float) -> None:
    """Read the slot map again (before the next command), after `pause` seconds."""
    cluster._initialize = True  # what RedisCluster sets itself after a connection error
    await asyncio.sleep(pause)
