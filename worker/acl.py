"""The least Redis ACL each part of syncworker needs, as `ACL SETUSER` rules.

One place lists them so that docs/operations.md shows exactly what tests/integration/test_acl.py
grants a real redis-server (the docs test renders these rules for the stream `orders` and
checks the page holds them). Every list names the commands the Python side sends *and* the
ones its Lua scripts call: Redis checks a script's `redis.call` against the user too.

redis-py runs a registered script with EVALSHA; when the server does not know it, it sends
SCRIPT LOAD (SCRIPT EXISTS first, inside a pipeline) and EVALSHA again. Some one-off scripts go
with EVAL. CLIENT SETINFO is what redis-py sends on connect (it ignores a refusal, but the
refusal lands in ACL LOG).
"""

from __future__ import annotations

from worker import keys
from worker.partitions import check_partitioned_name, partition_names
from worker.runtime.claims import handover_key
from worker.runtime.leases import lease_key, members_key

CONNECT = "+ping"
SCRIPTS = "+evalsha +script|load +script|exists"

WORKER = (
    f"{CONNECT} {SCRIPTS} +eval_ro +multi +exec +time "
    "+xreadgroup +xgroup|create +xinfo|groups +xpending +xclaim +xack +xlen "
    "+xadd +xrange +xrevrange +xdel +type +hset +hget +hmget +hdel +expire "
    "+set +eval +xinfo|stream"
)
"""`syncworker run` itself: read, ack, retry, take over, hand over, dead-letter (wide entries:
EVAL_RO, MULTI/EXEC), keep its presence key (SET with a TTL), and the gauges of the metrics
server (XLEN, XPENDING, XINFO GROUPS; EVAL and XINFO STREAM estimate the lag when Redis reports
none)."""

PROJECTION = "+type +exists +hget +hset +hdel +del +set +hincrby"
RELAY = "+type +exists +set +hincrby +xadd +xrevrange +xrange +xdel +multi +exec"

STATUS = f"{CONNECT} +xlen +xinfo|groups +xinfo|consumers +xpending"
CHECK = f"{CONNECT} +info +config|get"
DLQ_READ = f"{CONNECT} +xlen +xrange +xrevrange +eval_ro"
DLQ_REPLAY = f"{DLQ_READ} {SCRIPTS} +xinfo|groups +xadd +xdel +type +multi +exec"
DLQ_PURGE = f"{DLQ_READ} +xdel +xtrim"
TRIM = f"{CONNECT} {SCRIPTS} +exists +xinfo|groups +xpending +xtrim"
PRUNE = f"{CONNECT} {SCRIPTS} +xinfo|consumers +xgroup|delconsumer +exists"
PUBLISH = f"{CONNECT} +xadd"

CLUSTER_CLIENT = "+cluster|slots +command"
"""What redis-py's cluster client sends before any command, for every role on a Redis Cluster:
CLUSTER SLOTS for the slot map (refused, redis-py reports "Cluster mode is not enabled on this
node"), and COMMAND to learn where each command's keys are."""
ORDERED = "+get +pexpire +del +zremrangebyscore +zadd +zrem +zrange +wait"
"""Leases (`worker.runtime.leases`): SET NX PX to take one (SET is in `WORKER`), GET to see
its owner, the renew script's GET and PEXPIRE, the release script's GET and DEL, the
membership script's TIME (in `WORKER`), ZREMRANGEBYSCORE, ZADD, PEXPIRE, ZREM and ZRANGE;
WAIT after a lease write on a primary with replicas (`worker.runtime.replicated`, which first
asks with ROLE, or CLUSTER NODES on a cluster, whether there is one)."""


def pattern(key: str) -> str:
    """`key` as an ACL key pattern that matches only itself (glob characters escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in key)


def rules(
    role: str,
    stream: str,
    dead_letter_suffix: str = ":dlq",
    *,
    cluster: bool = False,
    partitions: int = 0,
    ordered: bool = False,
) -> str:
    """The `ACL SETUSER <name> on >password` rules of `role` for one stream.

    Roles: run, status, check, dlq-read (list, show), dlq-replay, dlq-purge, trim,
    consumers-prune, publish. On a Redis Cluster (`cluster=True`) the derived keys carry the
    stream's hash tag (`worker.keys`). Handlers need their own keys on top of `run` (see
    `projection_rules`, `relay_rules`); the sql handler needs nothing more.

    With `partitions=N`, `stream` is a logical stream and the keys are those of each of its
    partitions `{stream:0}`..., listed one by one: a glob such as `{stream:*` would also
    grant the partitions of a stream named `stream:x`. `ordered=True` (for `run`, with
    partitions) adds the leases, the membership set and their commands (`ORDERED`).

    Raises:
        ValueError: a name or count that cannot be partitioned, or `ordered` without
            partitions.
    """
    if ordered and not partitions:
        raise ValueError("ordered routes need partitions (order is kept per partition)")
    topology = CLUSTER_CLIENT if cluster else ""
    if not partitions:
        return _render(role, _allowed(role, stream, dead_letter_suffix, cluster), topology)
    check_partitioned_name(stream, partitions)
    allowed = " ".join(
        _allowed(role, p, dead_letter_suffix, cluster) for p in partition_names(stream, partitions)
    )
    extra = ""
    if ordered and role == "run":
        # `<partition>:lease:<group>` and `<stream>:members:<group>`, for any group
        leases = (f"~{pattern(lease_key(p, ''))}*" for p in partition_names(stream, partitions))
        allowed += f" {' '.join(leases)} ~{pattern(members_key(stream, ''))}*"
        # worker.runtime.replicated asks whether the primary has replicas, then WAITs
        extra = f"{ORDERED} {'+cluster|nodes' if cluster else '+role'}"
    return _render(role, allowed, f"{topology} {extra}")


def _render(role: str, allowed: str, extra: str) -> str:
    text = f"resetkeys {allowed} resetchannels -@all {_COMMANDS[role]} {extra}"
    return " ".join(text.split())


_COMMANDS = {
    "run": WORKER,
    "status": STATUS,
    "check": CHECK,
    "dlq-read": DLQ_READ,
    "dlq-replay": DLQ_REPLAY,
    "dlq-purge": DLQ_PURGE,
    "trim": TRIM,
    "consumers-prune": PRUNE,
    "publish": PUBLISH,
}


def _allowed(role: str, stream: str, dead_letter_suffix: str, cluster: bool) -> str:
    """The key patterns of `role` for one Redis stream."""
    s, dlq = pattern(stream), pattern(keys.derived(stream, dead_letter_suffix, cluster))
    handover = pattern(handover_key(stream))
    # `<stream>:presence:<group>:<consumer>`, one per live worker
    presence = pattern(keys.derived(stream, ":presence:", cluster)) + "*"
    return {
        "run": f"~{s} ~{dlq} ~{handover} ~{presence}",
        "status": f"%R~{s} %R~{dlq}",
        "check": "",
        "dlq-read": f"%R~{dlq}",
        "dlq-replay": f"~{s} ~{dlq}",
        "dlq-purge": f"~{dlq}",
        "trim": f"~{s}",
        "consumers-prune": f"~{s} ~{presence}",
        "publish": f"%W~{s}",
    }[role]


def projection_rules(prefix: str, state_prefix: str | None = None) -> str:
    """What a projection adds to `run`: its entity hashes and its state keys."""
    state = state_prefix or f"syncworker:projection:{prefix.rstrip(':')}"
    return f"~{pattern(prefix)}* ~{pattern(state)}:* {PROJECTION}"


def relay_rules(targets: list[str], state_prefix: str = "syncworker:relay") -> str:
    """What a relay adds to `run`: its target streams and its markers and counters."""
    streams = " ".join(f"~{pattern(t)}" for t in targets)
    return f"{streams} ~{pattern(state_prefix)}:* {RELAY}"
