"""Deleting consumers that are gone, without ever deleting one that holds pending entries.

XGROUP DELCONSUMER drops the consumer's pending entries with it: nobody could reclaim them,
and they would never be processed. A consumer can receive entries between any check and the
delete (a process with that name may come back), so the check and the delete run in one Lua
script, atomically.

Idle time alone does not prove a consumer gone: on Redis 7.0 a live worker's idle time grows
while its stream is quiet. Running workers keep a presence key alive (see
`worker.runtime.presence`); a consumer whose key exists is kept, whatever its idle time.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from worker.admin.groups import ConsumerState
from worker.connection import text
from worker.runtime.presence import presence_key
from worker.topology import is_cluster

PRUNE = """
-- KEYS[1] stream, KEYS[2] the consumer's presence key (in the stream's slot on a cluster:
-- presence_key tags it there); ARGV[1] group, ARGV[2] consumer, ARGV[3] minimum idle ms.
-- Deletes the consumer only if its process is not alive, it holds no pending entries, and it
-- is still idle that long.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'alive'
end
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) > 0 then
      return 'pending'
    end
    if tonumber(info['idle']) < tonumber(ARGV[3]) then
      return 'active'
    end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 'deleted'
  end
end
return 'gone'
"""


@dataclass(frozen=True, slots=True)
class PruneResult:
    stream: str
    group: str
    consumer: ConsumerState
    outcome: str
    """deleted; pending (kept: holds entries); alive (kept: its process refreshes its presence
    key); active (kept: used since); gone; candidate."""


async def delete_if_idle(
    redis: Redis, stream: str, group: str, consumer: str, min_idle_s: float
) -> str:
    """Delete `consumer` if it is not alive, has no pending entries and has been idle
    `min_idle_s`.

    Returns:
        `deleted`, `alive`, `pending` or `active` (kept), or `gone` (no such consumer).
    """
    script = redis.register_script(PRUNE)
    keys = [stream, presence_key(stream, group, consumer, cluster=is_cluster(redis))]
    result = await script(keys=keys, args=[group, consumer, int(min_idle_s * 1000)])
    return result.decode() if isinstance(result, bytes) else str(result)


async def prune(
    redis: Redis, stream: str, group: str, min_idle_s: float, *, dry_run: bool = False
) -> list[PruneResult]:
    """Delete every consumer of `group` idle `min_idle_s` or more that holds nothing.

    Idle consumers that still hold entries are reported as `pending` and kept: the live
    consumers take their entries over once they are idle for `claim_idle`. Consumers whose
    process is alive (presence key set) are reported as `alive` and kept.
    """
    rows = await redis.xinfo_consumers(stream, group)
    results: list[PruneResult] = []
    for row in rows:
        state = ConsumerState(text(row["name"]), int(row["pending"]), int(row["idle"]) / 1000)
        if state.idle_s < min_idle_s:
            continue
        if state.pending:
            outcome = "pending"
        elif await redis.exists(presence_key(stream, group, state.name, cluster=is_cluster(redis))):
            outcome = "alive"
        elif dry_run:
            outcome = "candidate"
        else:
            outcome = await delete_if_idle(redis, stream, group, state.name, min_idle_s)
        results.append(PruneResult(stream, group, state, outcome))
    return results
