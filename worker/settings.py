"""WorkerSettings: the one source of configuration, from SYNCWORKER_* variables or a TOML file.

Environment variables win over the file, so a container can override one value of a baked-in
config without rewriting it.
"""

from __future__ import annotations

import difflib
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from worker import keys, redis_url
from worker.errors import ConfigError
from worker.gc_tuning import DEFAULT_THRESHOLD as DEFAULT_GC_THRESHOLD
from worker.redis_url import RedisUrl

ENV_PREFIX = "SYNCWORKER_"

MAX_BATCH_SIZE = 10_000
"""Most entries one XREADGROUP may ask for; the default read size is capped by it too."""


def default_batch_size(concurrency: int) -> int:
    """Entries per read when none is set: enough to feed every lane several times over.

    One read is parsed and dispatched per turn of the event loop. When a read holds no more
    entries than there are lanes, the lanes finish together, find the queue empty and park,
    and each message then pays a wake-up; at concurrency 256 with 1 ms handlers, reading
    4 x concurrency raised throughput by 14 % (docs/performance.md).
    """
    return min(max(256, 4 * concurrency), MAX_BATCH_SIZE)


def default_consumer_name() -> str:
    """hostname-pid: unique per process, and readable in `syncworker status`."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Route(BaseModel):
    """Routes one stream to one handler (entry-point name or `module:attr`), with options.

    When the handler is a factory or class, it is called with `options` as keyword arguments.
    """

    model_config = {"extra": "forbid"}

    stream: str = Field(min_length=1, description="Stream to read.")
    handler: str = Field(min_length=1, description="Entry-point name or module:attr.")
    types: list[str] | None = Field(None, description="Event types to deliver; None for all.")
    options: dict[str, Any] = Field(default_factory=dict, description="Factory keyword args.")
    name: str | None = Field(
        None,
        min_length=1,
        description="Name in logs and metrics; needed to route one plugin twice to a stream.",
    )
    envelope: Literal["syncworker", "cloudevents", "faststream", "dapr", "debezium"] | None = Field(
        None,
        description="Layout of the stream's entries: syncworker (this runtime's fields), "
        "cloudevents, faststream, dapr or debezium; None keeps the handler's own "
        "(default syncworker).",
    )
    middleware: list[str] = Field(
        default_factory=list,
        description="module:attr of middleware for this route, run inside the worker-wide "
        "ones and the handler's own (first listed outermost).",
    )
    model: str | None = Field(
        None,
        min_length=1,
        description="module:attr of the type (usually a pydantic model, or a Versions) that "
        "data must validate against; None keeps the handler's own.",
    )
    partitions: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Read the stream's N partitions {stream:0}..{stream:N-1} "
        "(worker.partitions); None keeps the handler's own (default: not partitioned).",
    )
    ordered: bool | Literal["strict"] | None = Field(
        None,
        description="true: each partition runs on one worker of the fleet at a time, under "
        "a lease, so a key's events apply in publish order; strict: also hold a key back "
        "behind its message waiting for a retry. Needs partitions.",
    )


_SENTINEL_ONLY = ("redis_sentinel_username", "redis_sentinel_password", "redis_sentinel_tls")
"""Settings that mean something only when the primary is found through Sentinel."""


class WorkerSettings(BaseSettings):
    """Every setting of a worker. Durations are seconds and accept fractions (`0.05`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, toml_file=None
    )

    # Connection
    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"),
        description="redis://[user:password@]host:port/db, rediss:// for TLS, unix://path, "
        "redis+cluster://host:port[,host:port...] for Redis Cluster, or "
        "redis+sentinel://host:port[,host:port...]/service_name[/db] for Sentinel "
        "(rediss+cluster://, rediss+sentinel:// with TLS).",
    )
    redis_username: str | None = Field(None, description="ACL user, if not in the URL.")
    redis_password: SecretStr | None = Field(None, description="Password, if not in the URL.")
    redis_tls_ca_file: Path | None = Field(None, description="CA bundle for rediss:// URLs.")
    redis_tls_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    redis_tls_key_file: Path | None = Field(None, description="Client key (mutual TLS).")
    redis_tls_verify: bool = Field(True, description="Verify the server certificate.")
    redis_timeout: float = Field(10.0, gt=0, description="Seconds before a command times out.")
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host:port of the sentinels (port 26379 when left out): "
        "with redis_sentinel_service, the primary is the one they name. Instead of a "
        "redis+sentinel:// URL; redis_url then gives only the data nodes' scheme (rediss:// "
        "for TLS), credentials and database, without a host (redis:///0).",
    )
    redis_sentinel_service: str | None = Field(
        None, min_length=1, description="The name the sentinels monitor the primary under."
    )
    redis_sentinel_username: str | None = Field(
        None, min_length=1, description="ACL user of the sentinels (not of the data nodes)."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description="Password of the sentinels (their requirepass or ACL user); none by default.",
    )
    redis_sentinel_tls: bool | None = Field(
        None,
        description="TLS to the sentinels, with the redis_tls_* files and verification; "
        "None: as the data nodes (rediss).",
    )

    # Group membership
    group: str = Field("syncworker", min_length=1, description="Consumer group, one per fleet.")
    consumer: str = Field(
        default_factory=default_consumer_name,
        min_length=1,
        description="Consumer name; must be unique per live process (default hostname-pid).",
    )
    start_id: str = Field(
        "0", description="Where a new group starts: 0 for the whole stream, $ for new entries."
    )

    # Routing
    handlers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated entry-point names or module:attr of @handler plugins.",
    )
    routes: list[Route] = Field(
        default_factory=list, description="Stream-to-handler routes with options (TOML)."
    )
    middleware: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated module:attr of middleware wrapped around every handler "
        "call, first listed outermost (see worker.middleware).",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry tracing: a CONSUMER span per handler call, continuing the "
        "producer's traceparent. Needs the otel extra; see docs/tracing.md.",
    )

    # Throughput
    concurrency: int = Field(16, ge=1, le=10_000, description="Messages in flight per process.")
    batch_size: int = Field(
        0,
        ge=0,
        le=MAX_BATCH_SIZE,
        description="Most entries per XREADGROUP; 0 = 4 x concurrency, from 256 to 10,000.",
    )
    block: float = Field(1.0, gt=0, le=60, description="Seconds one XREADGROUP waits for data.")
    read_horizon: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Seconds of work a read takes beyond the free lanes, from the recent mean "
        "handler time (worker/runtime/readahead.py): slow handlers read only what their lanes "
        "start soon and leave the rest to peers; fast ones read full batches. 0 = always "
        "read up to batch_size.",
    )
    held_bytes_max: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes (sum of field name and value lengths) of the entries a process "
        "keeps at once, held or waiting for a retry; reading pauses while they exceed it. An "
        "entry larger than this still runs, alone. Default 64 MiB; 0 = no byte bound.",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="Event loop of `syncworker run`: uvloop when installed (a dependency "
        "on Linux and macOS), else asyncio's (auto); or force one.",
    )
    gc_threshold: int = Field(
        DEFAULT_GC_THRESHOLD,
        ge=0,
        description="Young-generation threshold of Python's garbage collector in "
        "`syncworker run`, which also freezes the start-up heap; 0 keeps Python's defaults.",
    )
    handler_timeout: float = Field(
        300.0,
        ge=0,
        description="Seconds a handler call may run before it is cancelled and counts as "
        "failed (retried, then dead-lettered); 0 = no limit. Default 300, like arq's job "
        "timeout: a call that never returns must not hold its entry and its key for ever.",
    )
    progress_timeout: float = Field(
        0.0,
        ge=0,
        description="Seconds /healthz tolerates messages in flight while no handler call "
        "ends before it answers 503 (wedged); 0 = handler_timeout plus the read loop's "
        "margin (60 s by default), or no such check when handler_timeout is 0.",
    )

    # Retry and dead letters
    max_attempts: int = Field(5, ge=1, description="Deliveries before a message is dead-lettered.")
    retry_base: float = Field(1.0, ge=0, description="Seconds before the first retry.")
    retry_max: float = Field(300.0, ge=0, description="Cap on the retry delay, seconds.")
    retry_jitter: float = Field(0.2, ge=0, le=1, description="Fraction of the delay randomised.")
    dead_letter_suffix: str = Field(
        ":dlq", min_length=1, description="Dead-letter stream = original stream + this suffix."
    )

    # Reclaim
    claim_idle: float = Field(
        60.0,
        gt=0,
        description="Seconds a pending entry must be idle before another consumer "
        "takes it over. Live consumers refresh their entries at a third of this.",
    )
    claim_interval: float = Field(
        1.0, gt=0, description="Seconds between scans for due retries and abandoned entries."
    )
    claim_batch: int = Field(100, ge=1, description="Pending entries inspected per scan.")
    lease_ttl: float = Field(
        10.0,
        gt=0,
        description="Seconds a partition lease of an ordered route lives without renewal: a "
        "dead owner's partitions are taken over within about this. Renewed every quarter; "
        "the owner stops on its own after three quarters without a renewal.",
    )

    # Lifecycle
    shutdown_timeout: float = Field(
        30.0, ge=0, description="Seconds in-flight handlers get to finish after SIGTERM."
    )

    # Operations
    metrics_host: str = Field("0.0.0.0", description="Address of the metrics/health server.")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Its port; 0 disables it.")
    stats_interval: float = Field(
        15.0, gt=0, description="Seconds between refreshes of lag/pending gauges from Redis."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Minimum log level."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json, console, or auto (console on a terminal, else json)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("handlers", "middleware", "redis_sentinels", mode="before")
    @classmethod
    def _split_handlers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        """Refuse what redis-py would misread or fail on at connect time; see redis_url."""
        redis_url.parse(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_sentinels(self) -> WorkerSettings:
        """The sentinels come from the URL or from the settings, never half from each."""
        parsed = redis_url.split(self.redis_url.get_secret_value())
        if self.redis_sentinels or self.redis_sentinel_service is not None:
            self._check_sentinel_pair(parsed)
        elif parsed.topology != redis_url.SENTINEL:
            for name in _SENTINEL_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name}: set, but no sentinels are configured (set "
                        f"{ENV_PREFIX}REDIS_SENTINELS and {ENV_PREFIX}REDIS_SENTINEL_SERVICE, "
                        "or use a redis+sentinel:// URL)"
                    )
        return self

    def _check_sentinel_pair(self, parsed: RedisUrl) -> None:
        if not self.redis_sentinels:
            raise ValueError(
                f"redis_sentinels: missing; {ENV_PREFIX}REDIS_SENTINEL_SERVICE is set, and "
                "the two go together"
            )
        if self.redis_sentinel_service is None:
            raise ValueError(
                f"redis_sentinel_service: missing; {ENV_PREFIX}REDIS_SENTINELS is set, and "
                "the two go together"
            )
        if parsed.topology != redis_url.STANDALONE or parsed.scheme == "unix":
            raise ValueError(
                f"redis_sentinels: set, and so is a {parsed.scheme}:// URL in "
                f"{ENV_PREFIX}REDIS_URL; use one of them (the URL may still give the data "
                "nodes' credentials and database: redis://user:password@/0)"
            )
        if "redis_url" in self.model_fields_set and redis_url.names_host(parsed):
            raise ValueError(
                f"redis_url: names a host, but {ENV_PREFIX}REDIS_SENTINELS is set and the "
                "sentinels name the primary; leave the host out (redis:///0, "
                "rediss://user:password@/0) or unset one of them"
            )
        try:
            redis_url.check_addresses(self.redis_sentinels)
        except ValueError as exc:
            raise ValueError(f"redis_sentinels: {exc}") from None

    @model_validator(mode="after")
    def _check_tls_agrees(self) -> WorkerSettings:
        """An ssl_* option of the URL would silently win over `redis_tls_verify`: refuse it."""
        parsed = redis_url.split(self.redis_url.get_secret_value())
        if not parsed.tls:
            return self  # no TLS: the options do nothing
        if self.redis_tls_verify and (option := redis_url.disables_tls_verification(parsed)):
            raise ValueError(
                f"redis_url: the URL option {option} turns TLS verification off, but "
                "SYNCWORKER_REDIS_TLS_VERIFY is true; remove the option, or set "
                "SYNCWORKER_REDIS_TLS_VERIFY=false to turn verification off on purpose"
            )
        if not self.redis_tls_verify and (option := redis_url.enables_tls_verification(parsed)):
            raise ValueError(
                f"redis_url: the URL option {option} contradicts "
                "SYNCWORKER_REDIS_TLS_VERIFY=false; remove one of them"
            )
        return self

    @model_validator(mode="after")
    def _check_together(self) -> WorkerSettings:
        if self.retry_base > self.retry_max:
            raise ValueError("retry_base must not exceed retry_max")
        if self.claim_interval > self.claim_idle:
            raise ValueError("claim_interval must not exceed claim_idle")
        return self

    @model_validator(mode="after")
    def _resolve_batch_size(self) -> WorkerSettings:
        """Resolve 0 here, once, so that the ledger and the read loop size by the same number."""
        if not self.batch_size:
            self.batch_size = default_batch_size(self.concurrency)
        return self

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between refreshes of this consumer's entries: well inside `claim_idle`."""
        return self.claim_idle / 3

    @property
    def connection_url(self) -> RedisUrl:
        """The URL the clients are built from: `redis_url`, or with `redis_sentinels` set,
        the `redis+sentinel://` URL they and `redis_url` make together."""
        parsed = redis_url.split(self.redis_url.get_secret_value())
        if not self.redis_sentinels or self.redis_sentinel_service is None:
            return parsed
        return redis_url.with_sentinels(parsed, self.redis_sentinels, self.redis_sentinel_service)

    @property
    def masked_url(self) -> str:
        """`connection_url` with its credentials masked: what logs and messages show."""
        return self.connection_url.masked()

    @property
    def topology(self) -> str:
        """`standalone`, `cluster` or `sentinel`, from the URL's scheme or the sentinels."""
        return self.connection_url.topology

    @property
    def cluster(self) -> bool:
        """Whether the keys live on a Redis Cluster (derived keys then carry hash tags)."""
        return self.topology == redis_url.CLUSTER

    def dead_letter_stream(self, stream: str) -> str:
        """The dead-letter stream of `stream`: `orders:dlq`, or `{orders}:dlq` on a cluster."""
        return keys.derived(stream, self.dead_letter_suffix, self.cluster)


ELSEWHERE_VARIABLES = frozenset({"SYNCWORKER_CONFIG", "SYNCWORKER_POSTGRES_DSN"})
"""SYNCWORKER_* variables that are not settings but are read elsewhere (--config's default,
the sql handler's DSN)."""

ELSEWHERE_PREFIXES = ("SYNCWORKER_TEST_", "SYNCWORKER_BENCH_")
"""Prefixes of variables the test suite and the benchmarks read."""


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each SYNCWORKER_* variable that is no setting, with the closest name.

    pydantic-settings reads only the variables it knows, so a misspelt one would otherwise be
    ignored without a word.
    """
    known = {ENV_PREFIX + name.upper() for name in WorkerSettings.model_fields}
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in ELSEWHERE_VARIABLES:
            continue
        if upper.startswith(ELSEWHERE_PREFIXES):
            continue
        # Compared without the shared prefix, which would make every name look close.
        names = sorted(n.removeprefix(ENV_PREFIX) for n in known | ELSEWHERE_VARIABLES)
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), names, n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        warnings.append(f"{name} is not a setting{hint}")
    return warnings


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> WorkerSettings:
    """Build the settings from the environment, an optional TOML file, and explicit overrides.

    Raises:
        ConfigError: a value is missing, malformed or inconsistent; the message names where it
            was written: the environment variable, or the config file and its key.
    """
    settings_cls: type[WorkerSettings] = WorkerSettings
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError("--config", f"no such file: {path}")

        class FileSettings(WorkerSettings):
            model_config = SettingsConfigDict(toml_file=path)

        settings_cls = FileSettings
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise _config_error(exc, path, overrides) from None
    except ValueError as exc:  # e.g. a TOML syntax error
        raise ConfigError(str(config_file or "settings"), str(exc)) from None


def _config_error(
    exc: ValidationError, path: Path | None, overrides: Mapping[str, Any]
) -> ConfigError:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if not location:
        # A check across fields names the field it blames first: "redis_url: ...".
        field, sep, rest = message.partition(": ")
        if sep and field in WorkerSettings.model_fields:
            location, message = [field], rest
        else:
            return ConfigError("settings", message)
    key = location[0]
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, sorted(WorkerSettings.model_fields), n=1)
        message = "not a setting" + (f"; did you mean {close[0]}?" if close else "")
    env_name = ENV_PREFIX + key.upper()
    from_env = key not in overrides and env_name in {name.upper() for name in os.environ}
    if path is not None and not from_env and key not in overrides and _in_file(path, key):
        return ConfigError(f"{path}: {_toml_key(location)}", message)
    name = env_name
    if len(location) > 1:
        name += " (" + ".".join(location[1:]) + ")"
    return ConfigError(name, message)


def _in_file(path: Path, key: str) -> bool:
    try:
        return key in tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _toml_key(location: list[str]) -> str:
    """The key as written in the file: routes[0].opts for ('routes', '0', 'opts')."""
    key = location[0]
    for part in location[1:]:
        key += f"[{part}]" if part.isdigit() else f".{part}"
    return key
