"""structlog configuration: JSON lines for machines, console output for people.

Also what the start-up line shows of the settings: everything that shapes behaviour, with
passwords masked, so that an operator can tell from one log line how a worker was configured.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any, Literal

import structlog

from worker.connection import mask_url
from worker.log_output import LogOutput, LogOutputHandler
from worker.settings import WorkerSettings

SECRET_WORDS = ("password", "secret", "token", "credential", "apikey", "api_key")
"""Option keys whose values are never logged."""

EXIT_DRAIN_S = 1.0
"""Seconds the process waits at exit for queued log records to fit into stderr."""


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Route structlog (and stdlib logging) to stderr in the chosen format.

    Both write through one `LogOutput`, so that a closed or full stderr drops (and counts)
    records instead of raising into the runtime or blocking its event loop.

    Args:
        level: minimum level name.
        fmt: `json`, `console`, or `auto`: console when stderr is a terminal, else JSON.
    """
    console = use_console(fmt)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer())  # renders tracebacks itself
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
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
    if settings.redis_password is not None:
        values["redis_password"] = "***"
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
            masked[key] = "***"
        elif isinstance(value, str):
            masked[key] = mask_url(value)
        elif isinstance(value, dict):
            masked[key] = mask_secrets(value)
        else:
            masked[key] = value
    return masked
