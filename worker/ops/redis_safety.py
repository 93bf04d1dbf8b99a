"""Start-up check of the Redis server's durability settings.

A stream is one key. A server that may evict keys can drop a whole stream, its consumer
groups and their pending lists in one go, and a server without persistence loses them on
restart: either way messages vanish with no error anywhere. The worker cannot fix the server,
so it says so loudly (a warning per problem, and `Stats.redis_unsafe` for a gauge), and keeps
running: refusing to start would turn a durability risk into an outage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.connection import REDIS_DOWN
from worker.runtime.stats import Stats

log = structlog.get_logger("worker.ops.redis_safety")

EVICTION = "eviction"
"""maxmemory-policy is not `noeviction`: under memory pressure a stream can be deleted."""
NO_PERSISTENCE = "no_persistence"
"""Neither AOF nor RDB snapshots: a restart empties the server."""
REASONS = (EVICTION, NO_PERSISTENCE)
"""Every reason the check can report, so a gauge can show 0 for the ones that are fine."""

SAFE_POLICY = "noeviction"


@dataclass
class SafetyReport:
    """What the check found. `None` means the server would not say (CONFIG or INFO refused).

    Attributes:
        policy: the maxmemory-policy.
        maxmemory: the memory limit in bytes (0: none).
        aof: whether the append-only file is on (from INFO persistence).
        save: the RDB snapshot schedule (`""` when snapshots are off).
        unsafe: reason -> True when the server is unsafe for that reason, False when it was
            checked and is fine; reasons that could not be checked are absent.
    """

    policy: str | None = None
    maxmemory: int | None = None
    aof: bool | None = None
    save: str | None = None
    unsafe: dict[str, bool] = field(default_factory=dict)


async def inspect(redis: Redis) -> SafetyReport:
    """Read the server's eviction and persistence settings.

    CONFIG is often disabled or renamed (ACLs, managed Redis); INFO usually is not. Whatever
    the server refuses is left as unknown rather than guessed.

    Raises:
        redis.exceptions.ConnectionError, TimeoutError, OSError: the server is unreachable.
    """
    report = SafetyReport()
    report.policy = await _config_get(redis, "maxmemory-policy")
    maxmemory = await _config_get(redis, "maxmemory")
    report.maxmemory = int(maxmemory) if maxmemory is not None else None
    report.save = await _config_get(redis, "save")
    try:
        info = await redis.info("persistence")
    except ResponseError as exc:
        log.debug("redis_safety.info_refused", error=str(exc))
    else:
        if "aof_enabled" in info:
            report.aof = bool(int(info["aof_enabled"]))
    if report.policy is not None:
        report.unsafe[EVICTION] = report.policy != SAFE_POLICY
    if report.aof is True or report.save:
        report.unsafe[NO_PERSISTENCE] = False
    elif report.aof is False and report.save == "":
        report.unsafe[NO_PERSISTENCE] = True
    return report


async def _config_get(redis: Redis, name: str) -> str | None:
    try:
        reply = await redis.config_get(name)
    except ResponseError as exc:  # unknown command, NOPERM: CONFIG is off limits here
        log.debug("redis_safety.config_refused", parameter=name, error=str(exc))
        return None
    for key, value in reply.items():
        if (key.decode() if isinstance(key, bytes) else str(key)) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


async def check_redis_safety(redis: Redis, stats: Stats) -> SafetyReport | None:
    """Inspect the server, log a warning for each risk to the streams, record it in `stats`.

    Never raises for an unreachable server: the read loop deals with that; the check is then
    skipped (and returns None) rather than delaying start-up.
    """
    try:
        report = await inspect(redis)
    except REDIS_DOWN as exc:
        log.warning("redis_safety.skipped", error=str(exc))
        return None
    for reason, unsafe in report.unsafe.items():
        stats.redis_unsafe[reason] = int(unsafe)
    if report.unsafe.get(EVICTION):
        log.warning(
            "redis.unsafe",
            reason=EVICTION,
            maxmemory_policy=report.policy,
            maxmemory=report.maxmemory,
            note="this server may evict keys under memory pressure; an evicted stream loses "
            "every message in it and the group's pending list: set maxmemory-policy noeviction",
        )
    if report.unsafe.get(NO_PERSISTENCE):
        log.warning(
            "redis.unsafe",
            reason=NO_PERSISTENCE,
            appendonly=report.aof,
            save=report.save,
            note="persistence is off: a Redis restart loses every stream, group and pending "
            "message; enable appendonly yes with appendfsync everysec",
        )
    unknown = [reason for reason in REASONS if reason not in report.unsafe]
    if unknown:
        log.info(
            "redis_safety.unknown",
            unchecked=unknown,
            note="the server refused CONFIG or INFO (ACL or managed Redis); make sure "
            "maxmemory-policy is noeviction and persistence is on",
        )
    return report
