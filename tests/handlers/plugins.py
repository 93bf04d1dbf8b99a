"""Handler plugins that only tests use, loaded by `module:attr` from worker subprocesses."""

from __future__ import annotations

from handlers.idempotent import Effects, IdempotentHandler
from worker import Message


class Tally(IdempotentHandler):
    """Counts every message once: a total and a per-key count, both in the atomic step."""

    def __init__(self, prefix: str, ack: bool = True) -> None:
        self.prefix = prefix
        self.ack = ack

    async def effects(self, msg: Message, tx: Effects) -> None:
        tx.incr(self.prefix + "total")
        tx.hincrby(self.prefix + "by-key", msg.key or "", 1)
