"""Exceptions: what handlers raise to steer the runtime, and what start-up raises on bad config."""

from __future__ import annotations


class SyncWorkerError(Exception):
    """Base class of every exception syncworker defines."""


class Retry(SyncWorkerError):
    """Raised by a handler to ask for another attempt, optionally after a specific delay.

    Any other exception retries too, after the configured backoff; `Retry` exists for handlers
    that know better (a rate limit's Retry-After, a row locked by someone else). The attempt still
    counts towards `max_attempts`.

    Args:
        reason: why the attempt failed; lands in the log and, eventually, the dead letter.
        delay: seconds to wait before the next attempt; None uses the backoff policy.
    """

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(reason)
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0 seconds")
        self.delay = delay


class Reject(SyncWorkerError):
    """Raised by a handler for input that no retry can fix: the message is dead-lettered at once."""


class MalformedMessage(Reject):
    """A message whose payload cannot be decoded (bad JSON, a non-integer version)."""


class ConfigError(SyncWorkerError):
    """Configuration that cannot work; start-up fails with this one-line message and exit code 2.

    Args:
        setting: the setting (environment variable or config key) that is wrong.
        message: what is wrong with it.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class HandlerNotFound(ConfigError):
    """A handler name that no entry point or import string resolves to."""


class DuplicateHandlerName(ConfigError):
    """Two handlers registered under one name; routing would be ambiguous."""
