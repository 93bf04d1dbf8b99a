"""Safe trimming: remove only the entries every consumer group has read and acknowledged.

XTRIM MAXLEN keeps the newest N entries whatever the groups have done with the rest: a group
that is behind (a slow or stopped fleet, a backlog after an outage) loses entries it has not
read yet, and entries it has read but not acknowledged vanish from under their retries.
XTRIM MINID removes only entries older than one id. This module takes, for every group on the
stream, the lower of its oldest pending entry and the first entry it has not been delivered
yet, and trims below the lowest of those: nothing any group still needs is removed.

The bound is computed and applied in one Lua script, so no group can be created, rewound or
handed new entries between the reading of the groups and the trim.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from worker.connection import text

SAFE_TRIM = """
-- KEYS[1] stream; ARGV[1] '=' (exact) or '~' (whole macro nodes only), ARGV[2] '1' = dry run
-- Returns {removed, bound, group1, bound1, group2, bound2, ...}; removed is -1 without groups.
-- Ids are compared as decimal strings: sequence numbers can exceed Lua's exact integers.
local function cmp_num(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, seq
end
local function less(a, b)
  local ams, aseq = split(a)
  local bms, bseq = split(b)
  local c = cmp_num(ams, bms)
  if c ~= 0 then return c < 0 end
  return cmp_num(aseq, bseq) < 0
end
local function increment(digits)
  local out, carry = {}, 1
  for i = #digits, 1, -1 do
    local d = string.byte(digits, i) - 48 + carry
    carry = d >= 10 and 1 or 0
    out[i] = string.char(48 + d % 10)
  end
  local s = table.concat(out)
  if carry == 1 then s = '1' .. s end
  return s
end
local function next_id(id)
  local ms, seq = split(id)
  if seq == '18446744073709551615' then return increment(ms) .. '-0' end
  return ms .. '-' .. increment(seq)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-2, false}
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return {-1, false}
end
local bound = nil
local report = {}
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  -- Everything after last-delivered-id is undelivered; below it, only pending entries matter.
  local keep = next_id(info['last-delivered-id'])
  local summary = redis.call('XPENDING', KEYS[1], info['name'])
  if summary[1] > 0 and less(summary[2], keep) then
    keep = summary[2]
  end
  report[#report + 1] = info['name']
  report[#report + 1] = keep
  if bound == nil or less(keep, bound) then
    bound = keep
  end
end
local removed = 0
if ARGV[2] ~= '1' then
  removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1], bound)
end
local result = {removed, bound}
for _, value in ipairs(report) do
  result[#result + 1] = value
end
return result
"""


class NoGroups(Exception):
    """The stream has no consumer group, so nothing says which entries are done with."""


class NoStream(Exception):
    """The stream does not exist."""


@dataclass(frozen=True, slots=True)
class TrimResult:
    removed: int
    """Entries removed (0 on a dry run)."""
    bound: str
    """Entries with a smaller id were removed (or would be); this one and newer are kept."""
    groups: dict[str, str]
    """group -> the oldest entry it still needs (its oldest pending, or first undelivered)."""


async def safe_trim(
    redis: Redis, stream: str, *, approximate: bool = False, dry_run: bool = False
) -> TrimResult:
    """Remove the entries of `stream` that every consumer group has read and acknowledged.

    Args:
        approximate: trim whole radix-tree nodes only (`~`): cheaper on long streams, may
            keep a few more entries; never removes more.
        dry_run: compute the bound without removing anything.

    Raises:
        NoStream: the stream does not exist.
        NoGroups: the stream has no consumer group; nothing is removed.
    """
    script = redis.register_script(SAFE_TRIM)
    reply = await script(keys=[stream], args=["~" if approximate else "=", "1" if dry_run else "0"])
    removed = int(reply[0])
    if removed == -2:
        raise NoStream(stream)
    if removed == -1:
        raise NoGroups(stream)
    values = [text(v) for v in reply[1:]]
    groups = dict(zip(values[1::2], values[2::2], strict=True))
    return TrimResult(removed, values[0], groups)
