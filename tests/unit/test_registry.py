"""Loading handler plugins and validating how they are routed."""

from __future__ import annotations

import pytest

from worker import ConfigError, DuplicateHandlerName, Handler, HandlerNotFound, Message
from worker import handler as handler_decorator
from worker.registry import handlers_from_settings, import_string, validate
from worker.settings import Route, WorkerSettings


class Projection(Handler):
    """A configurable handler class, as plugins are."""

    def __init__(self, prefix: str = "") -> None:
        self.name = "projection"
        self.prefix = prefix

    async def handle(self, msg: Message) -> None:
        return None


class AtomicHandler(Projection):
    acks_atomically = True


@handler_decorator(stream="orders", types=["order.paid"])
async def on_paid(msg: Message) -> None:
    return None


def settings(**values: object) -> WorkerSettings:
    return WorkerSettings(metrics_port=0, **values)  # type: ignore[arg-type]


class TestLoading:
    def test_import_string_resolves_module_and_attribute(self) -> None:
        """module:attr imports the attribute, dotted paths included."""
        assert import_string("tests.unit.test_registry:Projection.__init__") is (
            Projection.__init__
        )

    def test_decorated_function_is_loaded_by_module_attr(self) -> None:
        """SYNCWORKER_HANDLERS=module:attr yields the handler with its stream and types."""
        [h] = handlers_from_settings(settings(handlers=["tests.unit.test_registry:on_paid"]))
        assert (h.name, h.streams, h.types) == ("on_paid", ("orders",), frozenset({"order.paid"}))

    def test_factory_route_builds_with_options_and_binds_the_stream(self) -> None:
        """A class routed in [[routes]] is built with its options and bound to the stream."""
        route = Route(
            stream="payments",
            handler="tests.unit.test_registry:Projection",
            options={"prefix": "pay:"},
        )
        [h] = handlers_from_settings(settings(routes=[route]))
        assert isinstance(h, Projection)
        assert (h.prefix, h.streams, h.types) == ("pay:", ("payments",), None)

    def test_one_class_serves_two_streams(self) -> None:
        """The same factory on two routes gives two independent handlers."""
        routes = [
            Route(stream=s, handler="tests.unit.test_registry:Projection", options={"prefix": s})
            for s in ("a", "b")
        ]
        first, second = handlers_from_settings(settings(routes=routes))
        assert (first.streams, second.streams) == (("a",), ("b",))

    def test_one_plugin_twice_on_a_stream_with_route_names(self) -> None:
        """Two routes of one plugin on one stream work once each route has its own name."""
        routes = [
            Route(
                stream="orders",
                handler="tests.unit.test_registry:Projection",
                options={"prefix": p},
                name=f"projection-{p}",
            )
            for p in ("a", "b")
        ]
        names = [h.name for h in handlers_from_settings(settings(routes=routes))]
        assert names == ["projection-a", "projection-b"]
        unnamed = [r.model_copy(update={"name": None}) for r in routes]
        with pytest.raises(DuplicateHandlerName):
            handlers_from_settings(settings(routes=unnamed))

    @pytest.mark.parametrize(
        "reference", ["nope", "tests.unit.test_registry:missing", "no_such_module:x"]
    )
    def test_unknown_handlers_are_config_errors(self, reference: str) -> None:
        """Unknown entry points, modules and attributes raise HandlerNotFound."""
        with pytest.raises(HandlerNotFound, match="SYNCWORKER_HANDLERS"):
            handlers_from_settings(settings(handlers=[reference]))

    def test_bad_factory_options_name_the_route(self) -> None:
        """Options the factory does not take are an error naming routes[0].options."""
        route = Route(
            stream="s", handler="tests.unit.test_registry:Projection", options={"colour": "red"}
        )
        with pytest.raises(ConfigError, match=r"routes\[0\]\.options"):
            handlers_from_settings(settings(routes=[route]))

    def test_factory_without_a_route_is_refused(self) -> None:
        """A class in SYNCWORKER_HANDLERS has no stream to read: a clear error."""
        with pytest.raises(ConfigError, match="route"):
            handlers_from_settings(settings(handlers=["tests.unit.test_registry:Projection"]))


class TestValidation:
    def test_no_handlers_is_refused(self) -> None:
        """A worker with nothing routed would read nothing."""
        with pytest.raises(ConfigError, match="no handlers"):
            validate([])

    def test_duplicate_names_on_one_stream_are_refused(self) -> None:
        """Two handlers named alike on one stream raise DuplicateHandlerName."""
        with pytest.raises(DuplicateHandlerName):
            validate([Projection().bind(["s"]), Projection().bind(["s"])])

    def test_atomic_acker_must_be_alone_on_its_stream(self) -> None:
        """A handler that acks atomically cannot share a stream with another handler."""
        with pytest.raises(ConfigError, match="only handler"):
            validate([AtomicHandler().bind(["s"]), on_paid.bind(["s"])])
        validate([AtomicHandler().bind(["s"]), on_paid.bind(["t"])])
