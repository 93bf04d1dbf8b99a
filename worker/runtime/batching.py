"""Batch forming: which messages of a batch stream go into one `handle_batch` call.

Per-key order holds because a batch only ever takes messages that *own* their key (see
`worker.runtime.lanes`): the lanes queue at most one message per key, and the later messages
of a key wait behind it as followers. So a batch holds at most one message per key, and a
key's next message joins a batch only after the batch holding its predecessor has been
settled. Two messages of one key never run at once, and never overtake each other.

Each batch stream has one `Gather`: its queue of messages waiting for a call. The gather
itself sits in the lanes' shared queue (at most once), so a free lane takes the next batch
of it just as it takes the next plain message, and several lanes run batches of one stream
at once.

Bounds:

- `batch_max` messages per call; a retried entry (delivery count above one) runs in smaller
  batches: at most `batch_max >> (attempt - 1)`, halved per extra delivery, down to one. A
  message that fails its batch (or kills the process in the middle of it: takeover then
  hands its suspects back as groups that halve per crash, `RetryPolicy.suspect_group`) thus
  ends up alone within a few attempts and is dead-lettered on its own, while its neighbours
  succeed in the smaller batches.
- `batch_wait`: a lane that finds fewer than `batch_max` messages waits that long for more,
  but only while another batch of the stream is running. Then the arrivals would trickle in
  as many small calls anyway; at low rates nothing is running, the message is handed over at
  once, and latency stays that of a single message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from worker.message import Message


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """How one stream's messages are batched.

    Args:
        batch_max: most messages per call.
        batch_wait: seconds to wait for more after the first, while the stream is busy.
    """

    batch_max: int
    batch_wait: float


def batch_cap(batch_max: int, attempt: int) -> int:
    """Most messages a batch holding delivery number `attempt` may have: halved per extra
    delivery, down to one."""
    return max(batch_max >> max(attempt - 1, 0), 1)


class Gather:
    """The messages of one batch stream that wait for a call, and who is gathering them."""

    __slots__ = ("queue", "queued", "running", "spec", "stream", "waiter")

    def __init__(self, stream: str, spec: BatchSpec) -> None:
        self.stream = stream
        self.spec = spec
        self.queue: deque[Message] = deque()
        self.queued = False
        """Whether this gather is in the lanes' queue (a lane will take a batch of it)."""
        self.running = 0
        """Batches of this stream being run now."""
        self.waiter: asyncio.Future[None] | None = None
        """Set while a lane waits `batch_wait` for more messages."""

    def arrived(self) -> bool:
        """A message was queued: whether the lanes must be told (False while a lane is
        gathering or the gather is queued already). Wakes a gathering lane once full."""
        waiter = self.waiter
        if waiter is not None:
            if len(self.queue) >= self.spec.batch_max and not waiter.done():
                waiter.set_result(None)
            return False
        return not self.queued

    def should_wait(self) -> bool:
        """Wait for more before the call? Only while another batch of the stream runs, and
        the next batch is not full yet."""
        spec = self.spec
        return spec.batch_wait > 0 and self.running > 0 and len(self.queue) < self.cap_at_front()

    def cap_at_front(self) -> int:
        if not self.queue:
            return self.spec.batch_max
        return batch_cap(self.spec.batch_max, self.queue[0].attempt)

    async def wait_for_more(self) -> None:
        """Wait up to `batch_wait` seconds, or until a full batch is queued."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(self.spec.batch_wait, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def wake(self) -> None:
        if self.waiter is not None:
            _wake(self.waiter)

    def take(self) -> list[Message]:
        """The next batch: from the front, as many as the smallest cap of its members allows."""
        queue = self.queue
        batch_max = self.spec.batch_max
        batch: list[Message] = []
        cap = batch_max
        while queue and len(batch) < cap:
            attempt = queue[0].attempt
            if attempt > 1:
                own = batch_cap(batch_max, attempt)
                if own <= len(batch):
                    break  # it goes first in the next, smaller batch
                cap = min(cap, own)
            batch.append(queue.popleft())
        return batch


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
