"""structlog configuration: JSON lines for machines, console output for people.

Also what the start-up line shows of the settings: everything that shapes behaviour, with
passwords masked, so that an operator can tell from one log line how a worker was configured.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal

import structlog

from worker.log_output import LogOutput, LogOutputHandler
from worker.redis_url import MASK, SECRET_WORDS, mask_url, passwords_in, secret_forms, split
from worker.settings import ENV_PREFIX, WorkerSettings

POSTGRES_DSN_ENV = "SYNCWORKER_POSTGRES_DSN"
"""The sql handler's DSN variable (handlers.sql.DSN_ENV; not imported, to keep psycopg out)."""

MIN_REDACTED_LEN = 4
"""Secrets shorter than this are not searched for in log text: they would mask common words."""

EXIT_DRAIN_S = 1.0
"""Seconds the process waits at exit for queued log records to fit into stderr."""


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog (and stdlib logging) to stderr in the chosen format.

    Both write through one `LogOutput`, so that a closed or full stderr drops (and counts)
    records instead of raising into the runtime or blocking its event loop.

    Args:
        level: minimum level name.
        fmt: `json`, `console`, or `auto`: console when stderr is a terminal, else JSON.
        secrets: values replaced by `***` wherever they appear in an event or a traceback
            (raw, percent-encoded or decoded), as a last line of defence.
    """
    console = use_console(fmt)
    redactor = Redactor(secrets)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text here, for both formats, so that they are redacted too.
        structlog.processors.format_exc_info,
        redactor,
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer())
    else:
        processors.append(structlog.processors.JSONRenderer())
    output = _use_output(LogOutput(sys.stderr, json_lines=not console))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(file=output),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=level,
        handlers=[LogOutputHandler(output)],
        format="%(levelname)s %(name)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)  # configured again: the new secrets replace the old
        handler.addFilter(RedactingFilter(redactor))


_output: LogOutput | None = None


def _use_output(output: LogOutput) -> LogOutput:
    """Make `output` the one drained at exit (registering the exit hook once)."""
    global _output
    if _output is None:
        atexit.register(_drain_at_exit)
    _output = output
    return output


def _drain_at_exit() -> None:
    # Bounded: a pipe nobody reads must not hold the process after the worker has stopped.
    if _output is not None:
        _output.drain(EXIT_DRAIN_S)


class Redactor:
    """structlog processor: replaces known secrets in every string of an event with `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {form for s in secrets if len(s) >= MIN_REDACTED_LEN for form in secret_forms(s)}
        self.forms = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(
        self, logger: Any, name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self.forms:
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = self.redact(value)
        return event

    def redact(self, text: str) -> str:
        for form in self.forms:
            text = text.replace(form, MASK)
        return text


class RedactingFilter(logging.Filter):
    """logging filter: the same redaction for records of libraries that log through the
    standard library (asyncio's "Task exception was never retrieved", redis-py)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor.forms:
            record.msg, record.args = self.redactor.redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text = self.redactor.redact(text)
        return True


def secrets_in_environment(environ: Mapping[str, str]) -> list[str]:
    """The passwords in the SYNCWORKER_* variables that carry credentials, without
    validating anything: for redacting the traceback of a command that failed."""
    found = passwords_in(environ.get(ENV_PREFIX + "REDIS_URL", ""))
    found += passwords_in(environ.get(POSTGRES_DSN_ENV, ""))
    found.append(environ.get(ENV_PREFIX + "REDIS_PASSWORD", ""))
    found.append(environ.get(ENV_PREFIX + "REDIS_SENTINEL_PASSWORD", ""))
    return [f for f in found if f]


def secret_values(settings: WorkerSettings) -> list[str]:
    """The credentials in the settings: the URL's password and username-less userinfo, the
    password settings (data nodes and sentinels), and secret-looking route options."""
    values = [split(settings.redis_url.get_secret_value()).password or ""]
    for password in (settings.redis_password, settings.redis_sentinel_password):
        if password is not None:
            values.append(password.get_secret_value())
    for route in settings.routes:
        values.extend(_secret_options(route.options))
    values.extend(passwords_in(os.environ.get(POSTGRES_DSN_ENV, "")))
    return [v for v in values if v]


def _secret_options(options: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key, value in options.items():
        if isinstance(value, dict):
            found.extend(_secret_options(value))
        elif isinstance(value, str) and any(word in key.lower() for word in SECRET_WORDS):
            found.append(value)
        elif isinstance(value, str):
            found.extend(passwords_in(value))
    return found


def use_console(fmt: str, *, isatty: bool | None = None) -> bool:
    """Whether `fmt` means console output here: `auto` follows whether stderr is a terminal."""
    if fmt == "auto":
        if isatty is None:  # sys.stderr is None when the process started with stderr closed
            return sys.stderr is not None and sys.stderr.isatty()
        return isatty
    return fmt == "console"


def effective_settings(settings: WorkerSettings) -> dict[str, Any]:
    """The settings as the start-up line shows them: every field, secrets masked."""
    values = settings.model_dump(mode="json")
    values["redis_url"] = mask_url(settings.redis_url.get_secret_value())
    for name in ("redis_password", "redis_sentinel_password"):
        if values.get(name) is not None:
            values[name] = MASK
    values["routes"] = [
        {**route, "options": mask_secrets(route.get("options") or {})}
        for route in values.get("routes", [])
    ]
    values["pid"] = os.getpid()
    return values


def mask_secrets(options: dict[str, Any]) -> dict[str, Any]:
    """Handler options fit to log: secret-looking keys hidden, passwords in URLs masked."""
    masked: dict[str, Any] = {}
    for key, value in options.items():
        if any(word in key.lower() for word in SECRET_WORDS):
            masked[key] = MASK
        elif isinstance(value, str):
            masked[key] = mask_url(value)
        elif isinstance(value, dict):
            masked[key] = mask_secrets(value)
        else:
            masked[key] = value
    return masked
