"""Read-ahead: how many entries the next XREADGROUP asks for, from how fast the lanes finish.

An entry one consumer reads is that consumer's until it is done: its peers cannot take it.
A read of `batch_size` (256 by default) is right for fast handlers, whose lanes empty it in
milliseconds, and wrong for slow ones: with 2 s handlers the first worker to read takes a
small backlog whole and works through it 4 at a time while its peers idle (40 such messages
on 4 workers x 4 lanes took 20 s from the first read, 9 s with read-ahead:
docs/performance.md, "Fair read-ahead"), and autoscaling on lag cannot help while the
backlog sits in one pod.

So each read asks for what this process will start within `read_horizon` seconds:

    wanted = concurrency + concurrency x read_horizon / mean handler seconds - held

that is the lanes now free plus the entries the busy ones will finish within the horizon,
bounded by `batch_size` and the ledger's entry and byte budget (`limit`). Fast handlers
(mean well under read_horizon / batch_size x concurrency) keep reading full batches; slow
ones leave the rest of the stream to their peers and read again as lanes free up. Before
any handler has finished, only the free lanes are read.

The horizon (1 s by default) is what a worker may hold beyond its lanes, in seconds of its
own work: it is how long a peer may idle while this worker still has a queue. It must also
cover a read's round trip and the wake-up that follows it, or lanes wait for reads: at
0.05 s, on a machine loaded to 7 runnable processes per core, the chaos suite's workers
(handlers of 0 to 250 ms) fell so far behind that a third to most of the events were still
unread at the end of its drain bound; at 1 s they drained in 8 s, sooner than with
read-ahead off (20 s).

The mean is the recent one, from the handler-duration histograms the runtime keeps anyway
(`Stats.handler_seconds`) over the messages that ended meanwhile (`Stats.calls_ended`), so a
batch handler's call counts for the messages it served; smoothed so that one odd message
does not swing it. Only calls that returned are timed: handlers that keep failing leave the
mean where it was (or unknown, which reads the free lanes only).
"""

from __future__ import annotations

import asyncio
import contextlib

from worker.runtime.ledger import Ledger
from worker.runtime.stats import Stats

SMOOTHING = 0.3
"""Weight of the latest interval's mean handler time in the running estimate."""


class ReadAhead:
    """Sizes reads to the work the lanes will finish soon.

    Args:
        concurrency: the lanes.
        horizon: seconds of work to read ahead of the lanes; 0 or less disables the bound,
            and every read asks for `limit` (the behaviour before read-ahead).
        ledger: what this process holds.
        stats: the runtime's statistics, whose handler histograms give the mean run time.
    """

    def __init__(self, concurrency: int, horizon: float, ledger: Ledger, stats: Stats) -> None:
        self.concurrency = concurrency
        self.horizon = horizon
        self.ledger = ledger
        self.stats = stats
        self.mean: float | None = None
        """Recent mean handler seconds per message; None until a call finished."""
        self.per_lane = 1
        """Messages one lane starts at once: a batch handler's `batch_max` (the worker sets
        it when it routes batch handlers), so that free lanes are read for in whole
        batches."""
        self._seen = (0.0, 0)

    def count(self, limit: int) -> int:
        """Entries the next read should ask for, at most `limit`; 0 (only while at least
        every lane's worth is held): none until a lane frees up (`wait_for_release`)."""
        if self.horizon <= 0:
            return limit
        self._observe()
        lanes = self.concurrency
        ahead = 0.0 if self.mean is None else lanes * self.horizon / max(self.mean, 1e-9)
        # Reads in flight count as held: on a cluster several read loops ask at once.
        wanted = (
            int(lanes * self.per_lane + ahead) - self.ledger.held_count() - self.ledger.reserved
        )
        return max(min(wanted, limit), 0)

    async def wait_for_release(self, timeout: float) -> None:
        """Return once an entry was released (acked, dead-lettered, handed back), or after
        `timeout` seconds, so that the read loop stays alive to the gate and to liveness."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.ledger.wait_for_room(self.ledger.room() + 1)

    def _observe(self) -> None:
        # Handler seconds per message that ended, not per call: a batch handler's call
        # serves many messages, and a message with several handlers makes several calls.
        total = sum(h.sum for h in list(self.stats.handler_seconds.values()))
        ended = self.stats.calls_ended
        seen_total, seen_ended = self._seen
        if ended <= seen_ended or total <= seen_total:
            return
        self._seen = (total, ended)
        latest = (total - seen_total) / (ended - seen_ended)
        self.mean = latest if self.mean is None else self.mean + SMOOTHING * (latest - self.mean)
