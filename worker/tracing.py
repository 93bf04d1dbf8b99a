"""OpenTelemetry context propagation through stream entries, and the SDK set-up of the CLI.

Needs the `otel` extra (opentelemetry-api and -sdk). Nothing else in the runtime imports this
module unless tracing is in use: the publisher and the relay first check that the application
has imported `opentelemetry.trace` itself (`loaded`), so a process without OpenTelemetry never
loads it and pays one dict lookup per publish.

The trace context travels as entry fields, the ones the configured propagators write
(`OTEL_PROPAGATORS`; by default W3C `traceparent`, `tracestate` when the context has one,
and `baggage` when there is baggage). A CloudEvents entry carries them as extension
attributes of the event, as the CloudEvents distributed-tracing extension defines.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, TracerProvider

from worker.message import Message

TRACER_NAME = "syncworker"
SYSTEM = "redis"
"""`messaging.system` of every span: the broker is Redis Streams."""

try:
    VERSION: str | None = version("syncworker")
except PackageNotFoundError:  # running from a source tree
    VERSION = None


def tracer(provider: TracerProvider | None = None) -> trace.Tracer:
    """The runtime's tracer, from `provider` or the global one (resolved lazily, so a provider
    set after the worker was built still receives its spans)."""
    return trace.get_tracer(TRACER_NAME, VERSION, tracer_provider=provider)


def provider_set() -> bool:
    """Whether the application configured a global tracer provider (an SDK, a distro)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_fields(ctx: Context | None = None) -> dict[str, str]:
    """The propagation fields of `ctx` (default: the current context); empty when it has no
    valid span context, so nothing is written for an untraced call."""
    carrier: dict[str, str] = {}
    if trace.get_current_span(ctx).get_span_context().is_valid:
        propagate.inject(carrier, context=ctx)
    return carrier


@contextmanager
def sending(
    stream: str, provider: TracerProvider | None = None
) -> Iterator[tuple[Span | None, dict[str, str]]]:
    """A PRODUCER span `send <stream>` around one XADD, and the fields that carry it.

    Without a tracer provider (neither `provider` nor a global one) no span starts, and the
    fields carry the current context, if any, so a trace still passes through.
    """
    if provider is None and not provider_set():
        yield None, current_fields()
        return
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": stream,
    }
    with tracer(provider).start_as_current_span(
        f"send {stream}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span, current_fields()


class _EntryGetter(Getter[Message]):
    """Reads propagation fields from an entry's raw fields, else from its envelope's
    attributes (CloudEvents extension attributes, FastStream headers)."""

    def get(self, carrier: Message, key: str) -> list[str] | None:
        value = carrier.raw.get(key.encode())
        if value is None:
            found = getattr(carrier, "attributes", None)
            value = found.get(key) if isinstance(found, Mapping) else None
            if not isinstance(value, str):
                return None
            return [value]
        return [value.decode("utf-8", "replace")]

    def keys(self, carrier: Message) -> list[str]:
        return [name.decode("utf-8", "replace") for name in carrier.raw]


ENTRY_GETTER = _EntryGetter()


def extract(msg: Message) -> Context:
    """The context `msg`'s producer wrote into it (an empty one if none)."""
    return propagate.extract(msg, context=Context(), getter=ENTRY_GETTER)


def span_context_of(ctx: Context) -> trace.SpanContext:
    """The span context held by `ctx` (invalid if none)."""
    return trace.get_current_span(ctx).get_span_context()


@contextmanager
def attached(ctx: Context) -> Iterator[None]:
    """Make `ctx` the current context for the block."""
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def context_from_environment(env: Mapping[str, str] | None = None) -> Context:
    """The context in the `TRACEPARENT` and `TRACESTATE` environment variables (as CI
    systems and shell scripts pass a trace to a child process), empty if unset."""
    env = os.environ if env is None else env
    carrier = {name.lower(): env[name] for name in ("TRACEPARENT", "TRACESTATE") if name in env}
    return propagate.extract(carrier, context=Context())


def start_sdk(service_name: str = "syncworker") -> Callable[[], None] | None:
    """Set up the OpenTelemetry SDK for a `syncworker` process, unless a provider is set.

    The exporter follows `OTEL_TRACES_EXPORTER`: `otlp` (the default; needs an OTLP exporter
    package, such as opentelemetry-exporter-otlp-proto-http, which reads
    `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS` and the rest itself),
    `console`, or `none`. The resource comes from `OTEL_SERVICE_NAME` (default
    `service_name`) and `OTEL_RESOURCE_ATTRIBUTES`.

    Returns:
        A function that flushes and shuts the provider down at exit; None when the
        application (or `opentelemetry-instrument`) had set a provider already.
    """
    if provider_set():
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        defaults[SERVICE_NAME] = service_name
    provider = SdkTracerProvider(resource=Resource.create(defaults))
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        exporter = _exporter(name.strip().lower())
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _exporter(name: str) -> Any:
    if name in ("", "none"):
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")
    # The HTTP exporter is the one the extra installs; gRPC needs its own package.
    module = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        module = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
    return importlib.import_module(module).OTLPSpanExporter()
