"""Retry delay policy: exponential with a cap and deterministic jitter. Pure, no I/O.

The jitter is derived from the message id and the attempt rather than from a random number
generator, so every consumer in the fleet computes the same due time for the same pending
entry: the owner retries it, and the others know not to take it over before then.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the next attempt after `attempt` failed.

    Args:
        base: seconds after the first failure.
        cap: the delay never exceeds this many seconds.
        jitter: fraction (0..1) of the delay that is shaved off at random, so that messages
            failing together are not retried together.
    """

    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must be >= 0 seconds")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be between 0 and 1")

    def delay(self, attempt: int, message_id: str = "") -> float:
        """Seconds to wait after delivery number `attempt` (1-based) failed."""
        exponent = max(attempt, 1) - 1
        # 2**exponent overflows float long after the cap is reached; stop doubling early.
        raw = self.cap if exponent >= 64 else min(self.cap, self.base * (2.0**exponent))
        if not self.jitter or not raw:
            return raw
        return raw * (1.0 - self.jitter * _unit(message_id, attempt))


def _unit(message_id: str, attempt: int) -> float:
    """A number in [0, 1) that depends only on the message id and the attempt."""
    return zlib.crc32(f"{message_id}/{attempt}".encode()) / 2**32
