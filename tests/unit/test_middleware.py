"""Middleware: composed once per route, first listed outermost, worker-wide around typed
validation around the handler's own, for async and blocking handlers alike."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from worker import ConfigError, Handler, HandlerFunc, Message, Reject, WorkerSettings, handler
from worker.middleware import Middleware, chain, load, worker_middleware
from worker.registry import handlers_from_settings
from worker.runtime.dispatch import Dispatcher, RouteTable
from worker.runtime.policy import RetryPolicy
from worker.runtime.stats import Stats
from worker.testing import deliver, make_message

ROOT = Path(__file__).resolve().parents[2]
calls: list[str] = []
"""What the module-level middleware below saw, for the tests that load them by name."""


def recording(name: str, log: list[str]) -> Middleware:
    """A middleware that logs `name>` before and `<name` after the call, with its outcome."""

    def middleware(next: HandlerFunc) -> HandlerFunc:
        async def call(msg: Message) -> None:
            log.append(f"{name}>")
            try:
                await next(msg)
            except Exception as exc:
                log.append(f"<{name} {type(exc).__name__}")
                raise
            log.append(f"<{name}")

        return call

    return middleware


named = recording("named", calls)
"""Loaded by import string in the tests below."""


class Order(BaseModel):
    order_id: int


class TestChain:
    def test_no_middleware_is_the_handler_itself(self) -> None:
        """An empty chain returns the very function it was given: no wrapper per call."""

        async def handle(msg: Message) -> None:
            pass

        assert chain(handle, []) is handle

    async def test_first_listed_runs_outermost(self) -> None:
        """Middleware a, b around a handler run as a> b> handler <b <a."""
        log: list[str] = []

        async def handle(msg: Message) -> None:
            log.append("handler")

        await chain(handle, [recording("a", log), recording("b", log)])(make_message())
        assert log == ["a>", "b>", "handler", "<b", "<a"]

    def test_routes_compose_once_not_per_call(self) -> None:
        """The route's handle is built when the route table is, once."""
        built: list[int] = []

        def counting(next: HandlerFunc) -> HandlerFunc:
            built.append(1)
            return next

        @handler(stream="s", middleware=[counting])
        async def h(msg: Message) -> None:
            pass

        routes = RouteTable([h], Stats())
        Dispatcher(routes, None, 0)  # type: ignore[arg-type]
        assert built == [1]


class TestWhereMiddlewareComeFrom:
    async def test_decorator_middleware_wraps_the_call(self) -> None:
        """`@handler(middleware=[...])` runs around the function."""
        log: list[str] = []

        @handler(stream="s", middleware=[recording("own", log)])
        async def h(msg: Message) -> None:
            log.append("handler")

        result = await deliver(h, type="t")
        assert result.outcome == "ok"
        assert log == ["own>", "handler", "<own"]

    async def test_handler_class_attribute(self) -> None:
        """A `Handler` subclass lists its middleware in a `middleware` attribute."""
        log: list[str] = []

        class Totals(Handler):
            middleware = (recording("cls", log),)

            async def handle(self, msg: Message) -> None:
                log.append("handler")

        await deliver(Totals().bind(["s"]), type="t")
        assert log == ["cls>", "handler", "<cls"]

    async def test_worker_wide_then_typed_then_own(self) -> None:
        """Worker-wide middleware see an invalid event; the handler's own see `msg.event`."""
        log: list[str] = []
        seen: list[object] = []

        def reads_event(next: HandlerFunc) -> HandlerFunc:
            async def call(msg: Message) -> None:
                seen.append(msg.event)
                await next(msg)

            return call

        @handler(stream="s", model=Order, middleware=[reads_event, recording("own", log)])
        async def h(msg: Message) -> None:
            log.append("handler")

        ok = await deliver(h, type="t", data={"order_id": 7}, middleware=[recording("w", log)])
        assert ok.outcome == "ok"
        assert seen == [Order(order_id=7)]
        assert log == ["w>", "own>", "handler", "<own", "<w"]

        log.clear()
        bad = await deliver(h, type="t", data={"order_id": "x"}, middleware=[recording("w", log)])
        assert bad.outcome == "dead_letter"
        assert "order_id: Input should be a valid integer" in str(bad.error)
        assert log == ["w>", "<w InvalidEvent"]

    async def test_middleware_can_reject(self) -> None:
        """A middleware that raises `Reject` dead-letters the message without calling on."""
        called: list[Message] = []

        def gate(next: HandlerFunc) -> HandlerFunc:
            async def call(msg: Message) -> None:
                if msg.key is None:
                    raise Reject("no key")
                await next(msg)

            return call

        @handler(stream="s", middleware=[gate])
        async def h(msg: Message) -> None:
            called.append(msg)

        assert (await deliver(h, type="t")).outcome == "dead_letter"
        assert (await deliver(h, type="t", key="k")).outcome == "ok"
        assert len(called) == 1

    def test_route_config_adds_middleware_by_import_string(self, tmp_path: Path) -> None:
        """`middleware = ["pkg.mod:attr"]` on a route adds to the handler's own."""
        settings = WorkerSettings(
            routes=[
                {
                    "stream": "s",
                    "handler": "tests.unit.test_middleware:plain",
                    "middleware": ["tests.unit.test_middleware:named"],
                }
            ]
        )
        (bound,) = handlers_from_settings(settings)
        assert list(bound.middleware) == [named]
        assert plain.middleware == ()  # the decorated object itself is untouched

    def test_route_config_refuses_a_middleware_that_does_not_import(self) -> None:
        """A misspelt import string is a configuration error naming the route."""
        settings = WorkerSettings(
            routes=[
                {
                    "stream": "s",
                    "handler": "tests.unit.test_middleware:plain",
                    "middleware": ["tests.unit.test_middleware:nope"],
                }
            ]
        )
        with pytest.raises(ConfigError, match=r"routes\[0\]\.middleware"):
            handlers_from_settings(settings)

    def test_worker_setting_loads_import_strings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`SYNCWORKER_MIDDLEWARE` lists worker-wide middleware, before those passed in."""
        monkeypatch.setenv("SYNCWORKER_MIDDLEWARE", "tests.unit.test_middleware:named")
        settings = WorkerSettings()
        extra = recording("x", [])
        policy = RetryPolicy.from_settings(settings)
        assert worker_middleware(settings, policy, [extra]) == [named, extra]

    def test_not_callable_is_refused(self) -> None:
        """An import string naming something that is not a middleware is refused."""
        with pytest.raises(ConfigError, match="not callable"):
            load(["tests.unit.test_middleware:ROOT"], "SYNCWORKER_MIDDLEWARE")


@handler(stream="s")
async def plain(msg: Message) -> None:
    pass


class TestBlockingHandlers:
    async def test_middleware_run_in_the_loop_around_the_thread_call(self) -> None:
        """For a plain function, middleware run on the event loop's thread and the function
        in a worker thread, with the middleware's context variables visible."""
        where: dict[str, int] = {}
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
        seen: list[str] = []

        def marks(next: HandlerFunc) -> HandlerFunc:
            async def call(msg: Message) -> None:
                where["middleware"] = threading.get_ident()
                var.set("from middleware")
                await next(msg)

            return call

        @handler(stream="s", middleware=[marks])
        def blocking(msg: Message) -> None:
            where["handler"] = threading.get_ident()
            seen.append(var.get())

        result = await deliver(blocking, type="t")
        assert result.outcome == "ok"
        assert where["middleware"] == threading.get_ident()
        assert where["handler"] != threading.get_ident()
        assert seen == ["from middleware"]

    async def test_typed_blocking_handler_still_validates(self) -> None:
        """A blocking handler with a model gets `msg.event`, and invalid data dead-letters."""
        events: list[object] = []

        @handler(stream="s", model=Order)
        def blocking(msg: Message) -> None:
            events.append(msg.event)

        assert (await deliver(blocking, type="t", data={"order_id": 1})).outcome == "ok"
        assert events == [Order(order_id=1)]
        assert (await deliver(blocking, type="t", data={})).outcome == "dead_letter"

    async def test_blocking_failure_passes_through_middleware(self) -> None:
        """What the thread raises reaches the middleware, then the settler (a retry)."""
        log: list[str] = []

        @handler(stream="s", middleware=[recording("m", log)])
        def blocking(msg: Message) -> None:
            raise ValueError("boom")

        result = await deliver(blocking, type="t")
        assert result.outcome == "retry"
        assert log == ["m>", "<m ValueError"]


class TestSkipHooks:
    async def test_a_failing_skip_hook_is_logged_and_the_entry_still_acked(self) -> None:
        """A worker-wide middleware's `skipped` hook that raises never costs the entry."""

        class Noisy:
            def __call__(self, next: HandlerFunc) -> HandlerFunc:
                return next

            def skipped(self, msg: Message) -> None:
                raise RuntimeError("hook broke")

        @handler(stream="s", types=["wanted"])
        async def h(msg: Message) -> None:
            pass

        with capture_logs() as logs:
            result = await deliver(h, type="other", middleware=[Noisy()])
        assert result.outcome == "skipped"
        assert [e["event"] for e in logs] == ["middleware.hook_failed"]


def test_everything_but_tracing_works_without_opentelemetry() -> None:
    """Without the otel extra (its import made to fail), dispatching, batch calls, typed
    events, publishing and the relay work, and no module of it is loaded."""
    script = """
import asyncio, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())

import fakeredis
from pydantic import BaseModel
from worker import Message, Publisher, handler
from worker.testing import deliver, deliver_batch, make_message
from handlers.relay import Relay

class Order(BaseModel):
    order_id: int

@handler(stream="s", model=Order)
async def h(msg: Message) -> None:
    pass

async def main() -> None:
    assert (await deliver(h, type="t", data={"order_id": 1})).outcome == "ok"

    @handler(stream="s", batch=True)
    async def sink(msgs: list[Message]) -> list[None]:
        return [None] * len(msgs)

    batch = [make_message("s", type="t", fields={"traceparent": "x"}) for _ in range(2)]
    assert [d.outcome for d in await deliver_batch(sink, batch)] == ["ok", "ok"]
    redis = fakeredis.FakeAsyncRedis()
    await Publisher(redis).publish("s", "t", {"a": 1})
    relay = Relay(to="out")
    relay.use(redis)
    msg = Message("s", "1-1", {b"type": b"t", b"traceparent": b"x"})
    fields = relay.entry(msg, relay.targets[0])
    assert b"traceparent" in fields, fields
    await redis.aclose()

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("clean")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "clean", done.stderr


async def test_the_metrics_example_of_the_docs_counts_outcomes() -> None:
    """The example middleware in docs/middleware.md runs as shown and counts what it says."""
    from prometheus_client import REGISTRY

    text = (ROOT / "docs" / "middleware.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/middleware.md", "exec"), namespace)
    metrics = namespace["metrics"]

    @handler(stream="orders", name="sync_payment")
    async def sync_payment(msg: Message) -> None:
        if msg.data.get("currency") not in {"EUR", "USD"}:
            raise Reject("unsupported currency")

    result = await deliver(sync_payment, type="t", data={}, middleware=[metrics])
    assert result.outcome == "dead_letter"
    assert (
        await deliver(sync_payment, type="t", data={"currency": "EUR"}, middleware=[metrics])
    ).outcome == "ok"
    for outcome in ("rejected", "ok"):
        labels = {"stream": "orders", "handler": "sync_payment", "outcome": outcome}
        assert REGISTRY.get_sample_value("app_handler_calls_total", labels) == 1
