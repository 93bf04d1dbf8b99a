"""The `wait_replicas` / `wait_timeout` options of the Redis plugins (projection, relay).

They matter where an effect and its acknowledgement replicate apart: on a Redis Cluster, an
effect in another slot than the stream (`handlers._cluster.effect`). On one server or with
Sentinel the effect, its marker and the XACK are one script on one primary (or the ack
follows on that primary): the replication stream carries them in order, so a failover keeps
the ack only with the effect. There is nothing to wait for, and the option is accepted (a
route's options stay the same across topologies) but only noted in the log.
"""

from __future__ import annotations

from typing import Any

import structlog

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
