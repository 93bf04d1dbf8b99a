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
from worker.runtime.claims import handover_key

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


def pattern(key: str) -> str:
    """`key` as an ACL key pattern that matches only itself (glob characters escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in key)


def rules(
    role: str, stream: str, dead_letter_suffix: str = ":dlq", *, cluster: bool = False
) -> str:
    """The `ACL SETUSER <name> on >password` rules of `role` for one stream.

    Roles: run, status, check, dlq-read (list, show), dlq-replay, dlq-purge, trim,
    consumers-prune, publish. On a Redis Cluster (`cluster=True`) the derived keys carry the
    stream's hash tag (`worker.keys`). Handlers need their own keys on top of `run` (see
    `projection_rules`, `relay_rules`); the sql handler needs nothing more.
    """
    s, dlq = pattern(stream), pattern(keys.derived(stream, dead_letter_suffix, cluster))
    handover = pattern(handover_key(stream))
    # `<stream>:presence:<group>:<consumer>`, one per live worker
    presence = pattern(keys.derived(stream, ":presence:", cluster)) + "*"
    allowed, commands = {
        "run": (f"~{s} ~{dlq} ~{handover} ~{presence}", WORKER),
        "status": (f"%R~{s} %R~{dlq}", STATUS),
        "check": ("", CHECK),
        "dlq-read": (f"%R~{dlq}", DLQ_READ),
        "dlq-replay": (f"~{s} ~{dlq}", DLQ_REPLAY),
        "dlq-purge": (f"~{dlq}", DLQ_PURGE),
        "trim": (f"~{s}", TRIM),
        "consumers-prune": (f"~{s} ~{presence}", PRUNE),
        "publish": (f"%W~{s}", PUBLISH),
    }[role]
    return f"resetkeys {allowed} resetchannels -@all {commands}".replace("  ", " ")


def projection_rules(prefix: str, state_prefix: str | None = None) -> str:
    """What a projection adds to `run`: its entity hashes and its state keys."""
    state = state_prefix or f"syncworker:projection:{prefix.rstrip(':')}"
    return f"~{pattern(prefix)}* ~{pattern(state)}:* {PROJECTION}"


def relay_rules(targets: list[str], state_prefix: str = "syncworker:relay") -> str:
    """What a relay adds to `run`: its target streams and its markers and counters."""
    streams = " ".join(f"~{pattern(t)}" for t in targets)
    return f"{streams} ~{pattern(state_prefix)}:* {RELAY}"
