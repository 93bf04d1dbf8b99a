"""The heartbeat snapshots what it refreshes: the ledger may change while a refresh awaits."""

from __future__ import annotations

from typing import Any

from tests.helpers import make_settings
from worker.message import Message
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.ledger import Ledger
from worker.runtime.stats import Stats


class _GrowingRedis:
    """A client whose script, on its first call, lets a new stream get its first entry."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.calls: list[tuple[str, list[Any]]] = []

    def register_script(self, _source: str) -> Any:
        async def touch(*, keys: list[str], args: list[Any]) -> int:
            self.calls.append((keys[0], args[3:]))
            if len(self.calls) == 1:
                # A read of a stream seen for the first time lands while this call awaits.
                self.ledger.hold(Message("new-stream", "9-0", {}, 1, "g"))
            return len(args) - 3

        return touch


class TestHeartbeatBeat:
    async def test_a_stream_held_for_the_first_time_during_a_beat_does_not_break_it(self) -> None:
        """A beat refreshes the streams it started with, even if a new one appears meanwhile."""
        # Given: a ledger holding entries of two streams
        ledger = Ledger(100)
        for stream in ("a", "b"):
            ledger.hold(Message(stream, "1-0", {}, 1, "g"))
        redis = _GrowingRedis(ledger)
        heartbeat = Heartbeat(
            redis,  # type: ignore[arg-type]
            make_settings("redis://127.0.0.1:1/0", "g"),
            ledger,
            Stats(),
        )
        # When: a third stream gets its first entry while the first refresh awaits Redis
        await heartbeat.beat()
        # Then: the beat finished and refreshed the two streams it knew of
        assert [stream for stream, _ in redis.calls] == ["a", "b"]
        assert ledger.is_held("new-stream", "9-0")
