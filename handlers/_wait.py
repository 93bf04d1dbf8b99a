"""The `wait_replicas` / `wait_timeout` options of the Redis plugins (projection, relay).

They matter where an effect and its acknowledgement replicate apart: on a Redis Cluster, an
effect in another slot than the stream (`handlers._cluster`), which `effect` runs with WAIT
on the script's connection. On one server or with
Sentinel the effect, its marker and the XACK are one script on one primary (or the ack
follows on that primary): the replication stream carries them in order, so a failover keeps
the ack only with the effect. There is nothing to wait for, and the option is accepted (a
route's options stay the same across topologies) but only noted in the log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from worker.cluster_wait import write_and_wait
from worker.errors import EffectNotReplicated

if TYPE_CHECKING:
    from handlers.projection import Projection
    from handlers.relay import Relay

log = structlog.get_logger("handlers.wait")


def check_wait(replicas: int, timeout: float) -> tuple[int, float]:
    """The options as given, once checked.

    Raises:
        ValueError: replicas below 0, or a timeout not above 0.
    """
    if int(replicas) != replicas or replicas < 0:
        raise ValueError(f"wait_replicas must be an integer >= 0, not {replicas!r}")
    if timeout <= 0:
        raise ValueError(f"wait_timeout must be > 0 seconds, not {timeout!r}")
    return int(replicas), float(timeout)


def note_wait(handler: Any, cluster: bool) -> None:
    """Say at start-up, off a cluster, why `wait_replicas` waits for nothing there."""
    if handler.wait_replicas and not cluster:
        log.info(
            "handler.wait_replicas_unused",
            handler=handler.name,
            wait_replicas=handler.wait_replicas,
            note="one primary: the effect and its ack replicate together, a failover keeps "
            "both or neither; WAIT applies on a Redis Cluster only",
        )


async def effect(
    handler: Projection | Relay,
    target: str,
    keys: list[str],
    args: list[Any],
    message_ids: Sequence[str],
    acked_after: bool,
) -> Any:
    """The handler's script for the events `message_ids` in `target`'s slot; its reply.

    With the handler's `wait_replicas`, when the ack follows as a command of its own
    (`acked_after`), the script and WAIT share one connection to the slot's primary. A rerun
    (a duplicate, a stale version) still writes its counter, so its WAIT covers the first
    run's effect too, whichever connection wrote it.

    While a primary's replicas have just failed to confirm (within the last `wait_timeout`),
    further calls for that primary are deferred without running: each would wait the whole
    timeout in vain, and a batch over many slots would wait once per slot.

    Raises:
        EffectNotReplicated: the replicas did not confirm the effect in time, or the event
            was deferred; the caller must not acknowledge it.
    """
    script = handler._script
    wanted = handler.wait_replicas
    if not (wanted and acked_after):
        return await script(keys=keys, args=args)
    redis: Any = handler._redis
    assert redis is not None, "on_startup was not called"
    unconfirmed = handler._unconfirmed
    primary = _primary_name(redis, target)
    if primary in unconfirmed and time.monotonic() - unconfirmed[primary] < handler.wait_timeout:
        handler.counts["not_replicated"] += len(message_ids)
        log.debug("handler.deferred", handler=handler.name, target=target, message_ids=message_ids)
        raise EffectNotReplicated(target, message_ids[0], 0, wanted)
    command = ["EVALSHA", script.sha, len(keys), *keys, *args]
    reply, acknowledged = await write_and_wait(
        redis, target, command, wanted, handler.wait_timeout, script=script.script
    )
    if acknowledged >= wanted:
        unconfirmed.pop(primary, None)
        return reply
    unconfirmed[primary] = time.monotonic()
    handler.counts["not_replicated"] += len(message_ids)
    log.warning(
        "handler.not_replicated",
        handler=handler.name,
        target=target,
        message_ids=message_ids,
        replicas=acknowledged,
        wait_replicas=wanted,
        wait_timeout=handler.wait_timeout,
        note="not acknowledged: it runs again, and is acknowledged once replicas confirm",
    )
    raise EffectNotReplicated(target, message_ids[0], acknowledged, wanted)


def _primary_name(redis: Any, key: str) -> str:
    """The primary the cluster client maps `key` to now; '' before it knows the slots."""
    try:
        return str(redis.get_node_from_key(key).name)
    except Exception:  # an uninitialised client or an uncovered slot: write_and_wait copes
        return ""
