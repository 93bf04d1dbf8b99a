"""Lanes: bounded concurrency with per-key order, and no task per message.

Each lane is one long-lived coroutine; creating an asyncio task per message would cost more
than a no-op handler, and a lane whose handlers do not suspend runs a whole batch in one go.

Lanes share one queue, so a free lane always takes the next message: no lane sits idle while
another has a backlog, which is what a fixed key-to-lane hash would cause (with 1 ms handlers
it cost a third of the throughput). Per-key order comes from the *owned keys* instead: the
first message of a key to be queued owns that key until it has run; later messages of the key
wait behind it, and the lane that ran the owner runs them next, in stream order. So two
messages of one entity never run at once and never overtake each other.

Streams with a batch handler queue their messages in a `Gather` of their own, which sits in
the shared queue in their place; a lane that takes it runs one batch (`worker.runtime.batching`
says how batches are formed and why per-key order holds).

Lanes are supervised: a lane that dies of anything but its own cancellation (shutdown) is
logged, counted and replaced, and the message it held is settled as failed, so that the
entry is retried and the rest of its key goes on. A silently dead lane would otherwise keep
its entry held (and refreshed by the heartbeat) for ever, and its key blocked with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import structlog

from worker.message import Message
from worker.runtime.batching import BatchSpec, Gather
from worker.runtime.stats import Stats
from worker.runtime.supervise import told_to_stop

log = structlog.get_logger("worker.runtime.lanes")

Process = Callable[[Message], Awaitable[None]]
ProcessBatch = Callable[[list[Message]], Awaitable[None]]
Lost = Callable[[Message, BaseException], None]

CANCEL_WAIT_S = 2.0
"""Seconds cancelled lanes get to end; a handler that swallows its cancellation (or a client
that loses one) must not hold up the shutdown."""


class _Lane:
    __slots__ = ("current", "task", "waiter")

    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.current: Message | list[Message] | None = None
        self.task: asyncio.Task[None] | None = None


class Lanes:
    """A fixed set of lanes that run `process` on submitted messages.

    Args:
        size: number of lanes, which is the most messages processed at once.
        process: the per-message coroutine; it must settle every outcome itself.
        lost: settles a message as failed when its lane died outside `process`'s own care.
        stats: where lane restarts are counted.
        batching: stream -> how its messages are batched, for streams with a batch handler.
        process_batch: the per-batch coroutine for those streams; it settles every outcome.
    """

    def __init__(
        self,
        size: int,
        process: Process,
        *,
        lost: Lost | None = None,
        stats: Stats | None = None,
        batching: Mapping[str, BatchSpec] | None = None,
        process_batch: ProcessBatch | None = None,
    ) -> None:
        self._lanes = [_Lane() for _ in range(size)]
        self._idle: list[_Lane] = []
        self._process = process
        self._lost = lost
        self._stats = stats or Stats()
        self._queue: deque[Message | Gather] = deque()
        self._gathers = {stream: Gather(stream, spec) for stream, spec in (batching or {}).items()}
        self._process_batch = process_batch
        self._owned: dict[bytes, deque[Message] | None] = {}
        """key -> the messages of that key queued behind the one that owns it (None: none
        yet; most keys never get a follower, so the deque is made only when one arrives)."""
        self._closed = False
        self._late: list[Message] = []
        """Messages submitted after `close()`: never run, handed back by the drain."""

    def start(self) -> None:
        for index, lane in enumerate(self._lanes):
            lane.task = asyncio.create_task(self._run(lane), name=f"syncworker-lane-{index}")

    def submit(self, msg: Message) -> None:
        """Queue a message; behind the earlier messages of its key, if any are unfinished.

        After `close()` nothing is queued: a read or claim that was in flight when the worker
        began to stop can still deliver (redis-py may lose the cancellation of a command in
        flight), and a lane still finishing its message would run the newcomer after the stop,
        or, with every lane done, nothing would run it and it would stay pending on this
        consumer, unreleased. It is kept for `late()` instead, and handed back.
        """
        if self._closed:
            self._late.append(msg)
            return
        key = msg.lane_key
        if key is not None:
            owned = self._owned
            if key in owned:
                followers = owned[key]
                if followers is None:
                    followers = owned[key] = deque()
                followers.append(msg)
                return
            owned[key] = None
        if self._gathers:
            gather = self._gathers.get(msg.stream)
            if gather is not None:
                gather.queue.append(msg)
                if gather.arrived():
                    self._enqueue(gather)
                return
        self._queue.append(msg)
        if self._idle:
            waiter = self._idle.pop().waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _enqueue(self, item: Message | Gather, *, first: bool = False) -> None:
        if isinstance(item, Gather):
            item.queued = True
        if first:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)
        if self._idle:
            waiter = self._idle.pop().waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _into_gather(self, msg: Message, gather: Gather) -> Gather | None:
        """A key's next message, of a batch stream, joins its gather (in front: it is older
        than what was queued there); returns the gather if this lane is to serve it."""
        gather.queue.appendleft(msg)
        if not gather.arrived():
            return None  # queued already, or a lane is gathering it
        gather.queued = True  # taken by this lane, next
        return gather

    async def _run(self, lane: _Lane) -> None:
        """Serve until closed; a lane that dies is replaced (in the same task) after its
        message was settled, starting with the next message of that message's key."""
        first: Message | Gather | None = None
        while True:
            try:
                await self._serve(lane, first)
                return
            except asyncio.CancelledError as exc:
                if told_to_stop():
                    raise  # shutdown
                first = self._died(lane, exc)
            except BaseException as exc:  # no lane dies of anything silently
                first = self._died(lane, exc)

    async def _serve(self, lane: _Lane, first: Message | Gather | None) -> None:
        queue = self._queue
        owned = self._owned
        process = self._process
        stats = self._stats
        loop = asyncio.get_running_loop()
        msg = first
        while True:
            while msg is not None or queue:
                if msg is None:
                    msg = queue.popleft()
                if isinstance(msg, Gather):
                    msg = await self._run_batch(lane, msg)
                    continue
                if self._gathers and msg.stream in self._gathers:
                    # A key shared with a batch stream handed its next message to this lane.
                    msg = self._into_gather(msg, self._gathers[msg.stream])
                    continue
                lane.current = msg
                await process(msg)  # never raises: the dispatcher settles every outcome
                lane.current = None
                stats.calls_ended += 1
                key = msg.lane_key
                msg = None if key is None else self._next_of_key(key, owned)
            if self._closed:
                return
            lane.waiter = loop.create_future()
            self._idle.append(lane)
            await lane.waiter
            lane.waiter = None

    async def _run_batch(self, lane: _Lane, gather: Gather) -> Gather | None:
        """Run one batch of `gather`; returns the gather to serve next, if this lane should."""
        gather.queued = False
        if gather.should_wait() and not self._closed:
            await gather.wait_for_more()
            if self._closed:
                return None  # close() has handed the queued messages back
        batch = gather.take()
        if not batch:
            return None
        if gather.queue and not gather.queued:
            self._enqueue(gather)  # the rest is another lane's next batch
        assert self._process_batch is not None
        lane.current = batch
        gather.running += 1
        try:
            await self._process_batch(batch)  # never raises: it settles every outcome
        finally:
            gather.running -= 1
        lane.current = None
        self._stats.calls_ended += len(batch)
        return self._after_batch(batch)

    def _after_batch(self, batch: list[Message]) -> Gather | None:
        """Hand each key of a settled batch on to its next message: into its gather (a later
        batch) or, for a key shared with another stream, into the queue. Returns a gather
        this lane is to serve next, if any."""
        owned = self._owned
        serve: Gather | None = None
        for m in batch:
            key = m.lane_key
            following = None if key is None else self._next_of_key(key, owned)
            if following is None:
                continue
            gather = self._gathers.get(following.stream)
            if gather is None:
                self._enqueue(following, first=True)
            elif self._into_gather(following, gather) is not None:
                if serve is None:
                    serve = gather
                else:
                    self._enqueue(gather)
        return serve

    def _died(self, lane: _Lane, exc: BaseException) -> Message | Gather | None:
        """Log and count a lane's death, settle its message; return the next of its key."""
        current, lane.current = lane.current, None
        if isinstance(current, list):
            return self._batch_died(lane, current, exc)
        msg = current
        if lane.waiter is not None:
            if lane in self._idle:
                self._idle.remove(lane)
            lane.waiter = None
        self._stats.lane_restarts += 1
        log.error(
            "lane.died",
            lane=self._lanes.index(lane),
            stream=msg.stream if msg else None,
            message_id=msg.id if msg else None,
            note="the lane is replaced; its message is settled as failed",
            exc_info=exc,
        )
        if msg is None:
            return None
        self._stats.calls_ended += 1
        if self._lost is not None:
            try:
                self._lost(msg, exc)
            except Exception:
                log.exception("lane.settle_failed", stream=msg.stream, message_id=msg.id)
        key = msg.lane_key
        return None if key is None else self._next_of_key(key, self._owned)

    def _batch_died(
        self, lane: _Lane, batch: list[Message], exc: BaseException
    ) -> Message | Gather | None:
        self._stats.lane_restarts += 1
        log.error(
            "lane.died",
            lane=self._lanes.index(lane),
            stream=batch[0].stream,
            message_ids=[m.id for m in batch][:20],
            note="the lane is replaced; its batch is settled as failed",
            exc_info=exc,
        )
        self._stats.calls_ended += len(batch)
        if self._lost is not None:
            for msg in batch:
                try:
                    self._lost(msg, exc)
                except Exception:
                    log.exception("lane.settle_failed", stream=msg.stream, message_id=msg.id)
        return self._after_batch(batch)

    def _next_of_key(self, key: bytes, owned: dict[bytes, deque[Message] | None]) -> Message | None:
        """The next message of `key`, which this lane runs now; or release the key."""
        followers = owned.get(key)
        if followers:
            if not self._closed:
                return followers.popleft()
            return None  # close() has handed the followers back
        owned.pop(key, None)
        return None

    def busy(self) -> bool:
        """Is any lane running a message? (Queued messages wait only while lanes are busy.)"""
        return any(lane.current is not None for lane in self._lanes)

    def close(self) -> list[Message]:
        """Stop taking work; return the queued messages that never started."""
        self._closed = True
        unstarted = [m for m in self._queue if isinstance(m, Message)]
        self._queue.clear()
        for gather in self._gathers.values():
            unstarted.extend(gather.queue)
            gather.queue.clear()
            gather.queued = False
            gather.wake()
        for followers in self._owned.values():
            if followers:
                unstarted.extend(followers)
                followers.clear()
        for lane in self._idle:
            if lane.waiter is not None and not lane.waiter.done():
                lane.waiter.set_result(None)
        self._idle.clear()
        return unstarted

    def late(self) -> list[Message]:
        """Take the messages submitted since `close()` (none of them started)."""
        late, self._late = self._late, []
        return late

    async def wait(self, timeout: float) -> list[Message]:
        """Wait up to `timeout` seconds for running messages; cancel and return the rest."""
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        else:
            pending = set()
        interrupted: list[Message] = []
        for lane in self._lanes:
            if lane.task in pending and lane.current:
                current = lane.current
                interrupted.extend(current if isinstance(current, list) else (current,))
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
            if stuck:
                log.warning(
                    "lanes.stuck",
                    lanes=sorted(t.get_name() for t in stuck),
                    note="a handler ignored its cancellation; shutting down without it",
                )
        return interrupted

    def cancel(self) -> None:
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
