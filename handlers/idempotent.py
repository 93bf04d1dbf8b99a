"""Exactly-once Redis effects for your own handlers, without writing Lua.

Record the Redis writes a message should cause on an `Effects` object; `commit` then runs them
in one Lua script together with a dedup marker for the message and, optionally, its XACK. A
message whose marker exists (a redelivery after a crash, or a takeover while the first run was
still going) changes nothing. So the effect of each message lands exactly once.

Subclass `IdempotentHandler` and implement `effects`:

```python
from handlers.idempotent import Effects, IdempotentHandler

class CountRevenue(IdempotentHandler):
    async def effects(self, msg: Message, tx: Effects) -> None:
        tx.hincrby("revenue", msg.data["currency"], msg.data["amount"])
        tx.xadd("audit", {"order": msg.key or "", "type": msg.type or ""})
```

Or use `Effects` directly wherever you hold the worker's Redis client (from `on_startup`):

```python
async with Effects(self.redis, msg, ack=False) as tx:
    tx.incr("orders:seen")
```

Reads happen before the commit (use the client as usual): the script only writes. The
marker key is `<state_prefix>:<group>:<stream>:<id>` (for a replayed dead letter, the stream
and id of the entry it copies, `Message.origin`, so a replay of an applied entry is a
duplicate), kept for `ttl` seconds (one day by
default), far longer than any entry stays pending.

On a Redis Cluster the recorded commands are grouped by the slot of their key, and each
group runs as one script with its own marker beside its keys; the XACK stays in the script
when every key shares the source stream's slot, else it follows them (`handlers._cluster`).

Caveat: Redis does not roll a script back when a command fails half-way (a WRONGTYPE error,
say). The marker is written after the last command, so such a message is retried, and the
commands before the failing one run again. Keep the recorded commands ones that cannot fail
on your data; every command here touches only the key it names (declared to the script).
A script passes at most about 7,000 values to one command (Lua's `unpack` stops near 8,000):
the helpers for variadic commands (`hset`, `hdel`, `sadd`, `srem`, `zadd`, `rpush`, `lpush`)
split wider writes into several commands, and `call` or `xadd` with more raises `Reject`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

from redis.asyncio import Redis

from handlers import _cluster
from worker import Handler, HandlerContext, Message, Reject
from worker.topology import is_cluster
from worker.wide import LUA_ITEMS, fits

RUN_ONCE = """
-- KEYS[1] marker, KEYS[2] source stream, KEYS[3..] keys the commands write
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' to XACK, ARGV[4] marker TTL ms,
-- ARGV[5] number of commands, then per command: n, followed by its n words
local applied = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  local pos = 6
  for c = 1, tonumber(ARGV[5]) do
    local n = tonumber(ARGV[pos])
    redis.call(unpack(ARGV, pos + 1, pos + n))
    pos = pos + n + 1
  end
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
  applied = 1
end
if ARGV[3] == '1' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
end
return applied
"""

Value = bytes | str | int | float
"""What a recorded command accepts as an argument."""

DEFAULT_PREFIX = "syncworker:done"
DEFAULT_TTL = 86400.0


class Effects:
    """Redis writes recorded for one message, run once and atomically by `commit`.

    Args:
        redis: the worker's Redis client (`HandlerContext.redis`).
        msg: the message whose effects these are.
        ack: XACK the message in the same script. Only for handlers with
            `acks_atomically = True`, which the runtime keeps alone on their stream.
        ttl: seconds the message's marker is kept.
        state_prefix: prefix of the marker keys.
    """

    def __init__(
        self,
        redis: Redis,
        msg: Message,
        *,
        ack: bool = False,
        ttl: float = DEFAULT_TTL,
        state_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        self.redis = redis
        self.msg = msg
        self.ack = ack
        self.ttl_ms = max(int(ttl * 1000), 1)
        stream, entry_id = msg.origin
        self.marker = f"{state_prefix}:{msg.group}:{stream}:{entry_id}"
        self.commands: list[tuple[Value, ...]] = []
        self.keys: dict[str, None] = {}
        self.applied: bool | None = None

    # Recording --------------------------------------------------------------------------

    def call(self, command: str, key: str, *args: Value) -> Effects:
        """Record any single-key write command: `tx.call("PFADD", "visitors", user)`.

        Raises:
            Reject: more arguments than a script can pass to one command (Lua's `unpack`
                stops near 8,000 values); the helpers below split such writes instead.
        """
        if not fits(len(args) + 2):
            raise Reject(f"{command} {key}: too many arguments for one command in a script")
        self.keys[key] = None
        self.commands.append((command, key, *args))
        return self

    def _many(self, command: str, key: str, items: Sequence[Value], step: int = 1) -> Effects:
        """A variadic command, as several commands of at most LUA_ITEMS values each (whole
        groups of `step` items: field and value, score and member)."""
        size = (LUA_ITEMS - 2) // step * step  # the command and key count too
        for start in range(0, len(items), size):
            self.call(command, key, *items[start : start + size])
        return self

    def set(self, key: str, value: Value, *, ex: float | None = None) -> Effects:
        """SET key value [PX ms]."""
        if ex is None:
            return self.call("SET", key, value)
        return self.call("SET", key, value, "PX", max(int(ex * 1000), 1))

    def delete(self, key: str) -> Effects:
        return self.call("DEL", key)

    def expire(self, key: str, seconds: float) -> Effects:
        return self.call("PEXPIRE", key, max(int(seconds * 1000), 1))

    def incr(self, key: str, amount: int = 1) -> Effects:
        return self.call("INCRBY", key, amount)

    def incrbyfloat(self, key: str, amount: float) -> Effects:
        return self.call("INCRBYFLOAT", key, amount)

    def hset(self, key: str, mapping: Mapping[str, Value]) -> Effects:
        if not mapping:
            return self
        return self._many("HSET", key, [item for pair in mapping.items() for item in pair], 2)

    def hdel(self, key: str, *fields: str) -> Effects:
        return self._many("HDEL", key, fields)

    def hincrby(self, key: str, field: str, amount: int = 1) -> Effects:
        return self.call("HINCRBY", key, field, amount)

    def sadd(self, key: str, *members: Value) -> Effects:
        return self._many("SADD", key, members)

    def srem(self, key: str, *members: Value) -> Effects:
        return self._many("SREM", key, members)

    def zadd(self, key: str, mapping: Mapping[str, float]) -> Effects:
        return self._many("ZADD", key, [item for m, s in mapping.items() for item in (s, m)], 2)

    def rpush(self, key: str, *values: Value) -> Effects:
        return self._many("RPUSH", key, values)

    def lpush(self, key: str, *values: Value) -> Effects:
        return self._many("LPUSH", key, values)

    def xadd(
        self, stream: str, fields: Mapping[str, Value], *, maxlen: int | None = None
    ) -> Effects:
        """XADD stream [MAXLEN ~ n] * field value ..."""
        trim: tuple[Value, ...] = ("MAXLEN", "~", maxlen) if maxlen is not None else ()
        flat = (item for pair in fields.items() for item in pair)
        return self.call("XADD", stream, *trim, "*", *flat)

    # Running ----------------------------------------------------------------------------

    async def commit(self) -> bool:
        """Run the recorded commands unless this message already ran them.

        Returns:
            True if they ran now, False if the message was a duplicate.
        """
        if self.applied is not None:
            raise RuntimeError("Effects.commit() was already called")
        args: list[Value] = [
            self.msg.group,
            self.msg.id,
            "1" if self.ack else "0",
            self.ttl_ms,
            len(self.commands),
        ]
        for command in self.commands:
            args.append(len(command))
            args.extend(command)
        if is_cluster(self.redis):  # one step per slot of the keys written: handlers._cluster
            self.applied = await _cluster.run_once(
                self.redis, RUN_ONCE, self.marker, self.msg.stream, self.commands, args
            )
            return self.applied
        result = await self.redis.eval(
            RUN_ONCE, 2 + len(self.keys), self.marker, self.msg.stream, *self.keys, *args
        )
        self.applied = bool(int(result))
        return self.applied

    async def __aenter__(self) -> Effects:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.commit()


class IdempotentHandler(Handler):
    """Base class for handlers whose Redis effects must land exactly once.

    Implement `effects`; the base class runs them with the message's dedup marker and its
    acknowledgement in one script. Set `ack = False` (a class attribute or `__init__`) to
    share a stream with other handlers; the marker alone then keeps the effect once.

    Attributes:
        redis: the worker's client, set in `on_startup`, for reads inside `effects`.
        ack: acknowledge in the same script (and so be alone on the stream).
        ttl: seconds each message's marker is kept.
        counts: `applied` and `duplicate` outcomes in this process.
    """

    ack: bool = True
    ttl: float = DEFAULT_TTL
    state_prefix: str = DEFAULT_PREFIX
    redis: Redis | None = None

    @property
    def acks_atomically(self) -> bool:  # type: ignore[override]
        return self.ack

    async def on_startup(self, ctx: HandlerContext) -> None:
        """Keep the worker's client; call it from overrides (`await super().on_startup(ctx)`)."""
        self.redis = ctx.redis
        self.counts: dict[str, int] = {"applied": 0, "duplicate": 0}

    async def effects(self, msg: Message, tx: Effects) -> None:
        """Record the writes `msg` should cause on `tx`; raise to retry or reject."""
        raise NotImplementedError

    async def handle(self, msg: Message) -> None:
        assert self.redis is not None, "on_startup was not called"
        tx = Effects(self.redis, msg, ack=self.ack, ttl=self.ttl, state_prefix=self.state_prefix)
        await self.effects(msg, tx)
        applied = await tx.commit()
        self.counts["applied" if applied else "duplicate"] += 1
