"""`python -m bench.dispatch_noop`: messages per second through the dispatcher, no-op handler.

Measures the cost the dispatcher adds per message (routing, the handler call, the settler
call), in process and without Redis, so that a change to the default path shows up above the
noise of a network benchmark. Run it on two checkouts to compare; it prints the median of
several runs for the `syncworker` layout and, where the checkout has envelopes, for a
`cloudevents` route and a typed (`model=`) handler; where it has middleware, with one
pass-through middleware (`middleware`) and with tracing into an SDK provider that exports
nowhere (`tracing`, the span bookkeeping alone; needs the otel extra). `batch` and
`batch-tracing` do the same for a no-op batch handler, in batches of 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from worker import Message, handler
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.stats import Stats

clock = time.perf_counter
"""Wall time by default; `--clock cpu` counts this process's CPU time instead, which other
work on a busy machine disturbs far less (the benchmark never waits on I/O)."""

traced_entries = False
"""`--traced-entries`: every entry carries a `traceparent` (the tracing rows then extract it,
and batch spans link to it)."""


class NullSettler:
    """Accepts every outcome and does nothing, so only dispatch is timed."""

    def ack(self, msg: Message, handler: str, *, skipped: bool = False) -> None:
        pass

    def failed(self, msg: Message, exc: BaseException, handler: str) -> None:
        raise AssertionError(exc)

    def dead_letter(self, msg: Message, exc: BaseException, handler: str, **_: Any) -> None:
        raise AssertionError(exc)


def entries(n: int, layout: str) -> list[dict[bytes, bytes]]:
    data = {"order_id": 1, "total": 19.9, "currency": "EUR"}
    if layout == "cloudevents":
        event = {
            "specversion": "1.0",
            "id": "e",
            "source": "/b",
            "type": "order.paid",
            "data": data,
        }
        fields = {b"data": json.dumps(event).encode()}
    else:
        fields = {b"type": b"order.paid", b"key": b"k", b"data": json.dumps(data).encode()}
    out = [dict(fields) for _ in range(n)]
    if traced_entries:  # each of a trace of its own, as a traced producer writes them
        for i, raw in enumerate(out):
            raw[b"traceparent"] = b"00-%032x-%016x-01" % (i + 1, i + 1)
    return out


async def rate(variant: str, n: int) -> float:
    async def noop(msg: Message) -> None:
        pass

    kwargs: dict[str, Any] = {}
    if variant == "cloudevents":
        kwargs["envelope"] = "cloudevents"
    elif variant == "typed":
        from pydantic import BaseModel

        class Order(BaseModel):
            order_id: int
            total: float
            currency: str

        kwargs["model"] = Order
    h = handler(stream="s", types=["order.paid"], **kwargs)(noop)
    dispatcher = Dispatcher(
        RouteTable([h], Stats(), *middleware(variant)),
        NullSettler(),  # type: ignore[arg-type]
        0,
    )
    messages = [Message("s", f"1-{i}", raw) for i, raw in enumerate(entries(n, variant))]
    started = clock()
    for msg in messages:
        await dispatcher.process(msg)
    return n / (clock() - started)


def middleware(variant: str) -> list[list[Any]]:
    """The worker-wide middleware of `variant`, as RouteTable's extra argument (none: [])."""
    if variant == "middleware":

        def passing(next: Any) -> Any:
            async def call(msg: Message) -> None:
                await next(msg)

            return call

        return [[passing]]
    if variant == "tracing":
        from opentelemetry.sdk.trace import TracerProvider

        from worker.middleware.tracing import Tracing
        from worker.runtime.backoff import Backoff
        from worker.runtime.policy import RetryPolicy

        policy = RetryPolicy(5, Backoff(), claim_idle=60.0)
        return [[Tracing(policy, tracer_provider=TracerProvider())]]
    return []


async def batch_rate(variant: str, n: int, size: int = 100) -> float:
    """A no-op batch handler, called on batches of `size` (with tracing: one span each)."""
    from worker.runtime.batch_dispatch import BatchDispatcher

    @handler(stream="s", types=["order.paid"], batch=True)
    async def noop(msgs: list[Message]) -> list[None]:
        return [None] * len(msgs)

    stats = Stats()
    routes = RouteTable([noop], stats, *middleware(variant.removeprefix("batch-")))
    dispatcher = Dispatcher(routes, NullSettler(), 0)  # type: ignore[arg-type]
    process_batch = BatchDispatcher(dispatcher, stats).process_batch
    messages = [Message("s", f"1-{i}", raw) for i, raw in enumerate(entries(n, "syncworker"))]
    started = clock()
    for i in range(0, n, size):
        await process_batch(messages[i : i + size])
    return n / (clock() - started)


async def lanes_rate(variant: str, n: int) -> float:
    """Message construction, lanes (16, per-key order) and dispatch: the path of a read."""
    from worker.runtime.lanes import Lanes

    async def noop(msg: Message) -> None:
        pass

    h = handler(stream="s", types=["order.paid"])(noop)
    dispatcher = Dispatcher(RouteTable([h], Stats()), NullSettler(), 0)  # type: ignore[arg-type]
    done = asyncio.Event()
    count = 0

    async def process(msg: Message) -> None:
        nonlocal count
        await dispatcher.process(msg)
        count += 1
        if count == n:
            done.set()

    lanes = Lanes(16, process)
    lanes.start()
    raws = entries(n, "syncworker")
    for i, raw in enumerate(raws):
        raw[b"key"] = f"k{i % 100}".encode()
    started = clock()
    for i, raw in enumerate(raws):
        lanes.submit(Message("s", f"1-{i}", raw))
        if i % 500 == 499:
            await asyncio.sleep(0)  # as the reader yields between reads
    await done.wait()
    elapsed = clock() - started
    lanes.close()
    await lanes.wait(1.0)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--only",
        default="syncworker,lanes,cloudevents,typed,middleware,tracing,batch,batch-tracing",
        help="variants",
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--traced-entries", action="store_true", help="a traceparent in each")
    args = parser.parse_args()
    global clock, traced_entries
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    traced_entries = args.traced_entries
    for variant in args.only.split(","):
        try:
            measure = lanes_rate if variant == "lanes" else rate
            if variant.startswith("batch"):
                measure = batch_rate
            rates = [asyncio.run(measure(variant, args.n)) for _ in range(args.runs)]
        except (TypeError, ImportError):  # a checkout without envelopes, models, middleware
            print(f"{variant:12} n/a")
            continue
        print(f"{variant:12} median {statistics.median(rates):>10,.0f} msg/s  (runs: {args.runs})")


if __name__ == "__main__":
    main()
