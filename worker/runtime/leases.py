"""Partition leases: which worker of a group runs each partition of an ordered route.

A lease is a key beside its partition, `{orders:3}:lease:<group>` (same hash slot), holding
the owner's consumer name, with a time to live of `lease_ttl`:

- taken with SET NX PX (only when free),
- renewed every quarter of `lease_ttl` by a script that sets the TTL again only while the
  value is still this consumer (compare-and-pexpire), one round trip per primary,
- given back by a compare-and-delete on graceful release.

Taking and renewing are followed by WAIT 1 on the same connection when the primary has
replicas (`worker.runtime.replicated`): a lease counts only once a replica holds it, since a
failover that lost it would free it for a peer while this owner still trusts it.

The owner keeps its own clock: a lease is valid locally until `renew_deadline` (three
quarters of `lease_ttl`) after the last renewal *was sent*. Redis applied that renewal later,
so its key lives at least a quarter of `lease_ttl` longer than the owner believes: an owner
cut off from Redis stops on its own before any peer can take the partition.

Workers see each other through a membership sorted set per logical stream and group,
`<stream>:members:<group>`, scored with the server's time at which each member's entry
expires (so no two clocks are compared); it is refreshed with the leases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from worker.connection import text
from worker.runtime.replicated import PartlyWritten, write_confirmed, write_confirmed_each

log = structlog.get_logger("worker.runtime.leases")

RENEW = """
-- KEYS[1] lease; ARGV[1] consumer, ARGV[2] ttl ms. Extends the lease only if still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
-- KEYS[1] lease; ARGV[1] consumer. Deletes the lease only if still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

MEMBERS = """
-- KEYS[1] membership set; ARGV[1] consumer, ARGV[2] ttl ms, ARGV[3] 1 to join, 0 to leave.
-- Scores are the server's clock: expired members are dropped, live ones returned.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def lease_key(partition: str, group: str) -> str:
    """The lease of `partition` for `group`, in the partition's hash slot."""
    return f"{partition}:lease:{group}"


def members_key(stream: str, group: str) -> str:
    """The membership set of the group's workers on the logical `stream`."""
    return f"{stream}:members:{group}"


def fair_share(partitions: int, members: int) -> int:
    """Most partitions one worker should own: ceil(partitions / members)."""
    return -(-partitions // max(members, 1))


@dataclass(slots=True)
class Lease:
    """A lease this worker holds, with its local expiry (time.monotonic())."""

    partition: str
    valid_until: float

    def remaining(self, now: float | None = None) -> float:
        return self.valid_until - (time.monotonic() if now is None else now)


class LeaseClient:
    """The lease and membership commands of one consumer of one group."""

    def __init__(self, redis: Redis, group: str, consumer: str, ttl: float) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.ttl_ms = max(int(ttl * 1000), 1)
        self.renew_deadline = ttl * 0.75
        """Seconds after sending a renewal (or the SET) that the owner trusts the lease."""
        self.wait_s = ttl / 8
        """Longest wait for a replica to confirm a lease write (half a renewal interval)."""
        self._release = redis.register_script(RELEASE)
        self._members = redis.register_script(MEMBERS)

    async def members(self, stream: str, *, join: bool = True) -> list[str]:
        """Refresh (or drop) this worker's membership; return the live members."""
        reply: Any = await self._members(
            keys=[members_key(stream, self.group)],
            args=[self.consumer, self.ttl_ms, 1 if join else 0],
        )
        return [text(m) for m in reply]

    async def acquire(self, partition: str) -> Lease | None:
        """Take the lease of `partition` if it is free, and a replica confirms it; one that
        no replica confirmed in time is given back (a failover could lose it)."""
        sent = time.monotonic()
        key = lease_key(partition, self.group)
        command = ("SET", key, self.consumer, "NX", "PX", self.ttl_ms)
        replies, confirmed = await write_confirmed(self.redis, key, [command], self.wait_s)
        if not replies[0]:
            return None
        if not confirmed:
            log.warning("lease.not_replicated", partition=partition, wait_s=self.wait_s)
            await self.release(partition)
            return None
        return Lease(partition, sent + self.renew_deadline)

    async def renew(self, leases: list[Lease]) -> list[Lease]:
        """Renew `leases`, one round trip per primary; return those that are no longer ours.

        A renewal no replica confirmed does not extend the lease: the owner's trust runs out
        on time unless a later one is confirmed (module doc of `worker.runtime.replicated`).
        """
        if not leases:
            return []
        sent = time.monotonic()
        writes = [
            (key, ("EVAL", RENEW, 1, key, self.consumer, self.ttl_ms))
            for key in (lease_key(lease.partition, self.group) for lease in leases)
        ]
        error: BaseException | None = None
        try:
            replies: list[tuple[Any, bool] | None] = list(
                await write_confirmed_each(self.redis, writes, self.wait_s)
            )
        except PartlyWritten as exc:  # keep what the other primaries renewed
            replies, error = exc.replies, exc.__cause__
        lost: list[Lease] = []
        for lease, result in zip(leases, replies, strict=True):
            if result is None:
                continue
            reply, confirmed = result
            if not reply:
                lost.append(lease)
            elif confirmed:
                lease.valid_until = sent + self.renew_deadline
        if error is not None:
            if not lost:
                raise error
            log.warning("lease.redis_unavailable", error=str(error))
        return lost

    async def release(self, partition: str) -> bool:
        """Give the lease of `partition` back, if it is still ours."""
        return bool(
            await self._release(keys=[lease_key(partition, self.group)], args=[self.consumer])
        )

    async def owners(self, partitions: list[str]) -> list[str | None]:
        """The current owner of each partition (None: free)."""
        if not partitions:
            return []
        pipe = self.redis.pipeline(transaction=False)  # one GET each: keys on many slots
        for partition in partitions:
            pipe.get(lease_key(partition, self.group))
        values = await pipe.execute()
        return [None if v is None else text(v) for v in values]
