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


class InvalidEvent(Reject):
    """A message whose payload does not match the model its handler declared (`model=`).

    Its text lists each validation error as `field.path: message`; the message is
    dead-lettered at once, as no retry can change the payload.
    """


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


class StartupError(SyncWorkerError):
    """Start-up cannot go on; the cause is already logged as `worker.start_failed` (exit 1)."""


class GroupRefused(SyncWorkerError):
    """Redis refused to create a missing consumer group (an ACL without XGROUP, a full Redis).

    Args:
        stream: the stream whose group is missing.
        group: the consumer group.
        error: Redis's refusal.
    """

    def __init__(self, stream: str, group: str, error: Exception) -> None:
        super().__init__(f"cannot create group {group!r} on {stream!r}: {error}")
        self.stream = stream
        self.group = group
        self.error = error

    @property
    def hint(self) -> str:
        """What an operator can do about it."""
        fix = "create the group beforehand (XGROUP CREATE <stream> <group> 0 MKSTREAM)"
        reply = str(self.error)
        if "NOPERM" in reply or "permission" in reply:
            return f"grant this user XGROUP, or {fix}"
        if "maxmemory" in reply or "OOM" in reply:
            return f"free memory in Redis (maxmemory is reached), or {fix}"
        return fix


class NotReplicated(SyncWorkerError):
    """A published entry was not confirmed by enough replicas within the wait timeout.

    Attributes:
        stream: the stream written to.
        entry_id: the id the primary gave the entry.
        acknowledged: how many replicas confirmed it.
        wanted: how many were asked for.
    """

    def __init__(self, stream: str, entry_id: str, acknowledged: int, wanted: int) -> None:
        super().__init__(
            f"{stream} {entry_id}: {acknowledged} of {wanted} replicas confirmed the entry in "
            "time; a failover now could lose it"
        )
        self.stream = stream
        self.entry_id = entry_id
        self.acknowledged = acknowledged
        self.wanted = wanted


class EffectNotReplicated(SyncWorkerError):
    """A built-in handler's effect was not confirmed by enough replicas within its
    `wait_timeout` (`wait_replicas` on a Redis Cluster, where the acknowledgement would go to
    another primary than the effect).

    The entry is not acknowledged: a failover of the effect's primary could otherwise lose the
    effect while the acknowledgement survives. The runtime treats it as Redis refusing a write
    for now: the entry runs again later without spending an attempt, and the effect's marker
    or version makes the rerun write nothing twice.

    Attributes:
        target: the key whose slot holds the effect (entity hash, target stream).
        message_id: the source entry.
        acknowledged: how many replicas confirmed it.
        wanted: how many were asked for.
    """

    def __init__(self, target: str, message_id: str, acknowledged: int, wanted: int) -> None:
        super().__init__(
            f"{message_id}: {acknowledged} of {wanted} replicas confirmed its effect on "
            f"{target} in time; not acknowledged, it runs again"
        )
        self.target = target
        self.message_id = message_id
        self.acknowledged = acknowledged
        self.wanted = wanted

    def about(self, message_id: str) -> EffectNotReplicated:
        """The same shortfall, for another entry whose effect went in the same call."""
        if message_id == self.message_id:
            return self
        return EffectNotReplicated(self.target, message_id, self.acknowledged, self.wanted)
