"""The retry policy: when a failed delivery is tried again, and when attempts are spent.

Decided once, here. The settler asks it after a failure, the retry scan and takeover ask it
before running an entry again, and `worker.testing` asks it so that a plugin's unit tests
see the outcomes the runtime would produce. Nobody else reads `max_attempts` or builds a
`Backoff`.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import Retry
from worker.runtime.backoff import Backoff
from worker.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and delays of one worker.

    Args:
        max_attempts: deliveries before a message is dead-lettered.
        backoff: the delay after each failed attempt, unless the handler asked for one.
        claim_idle: seconds after which an entry no live consumer refreshes is taken over.
    """

    max_attempts: int
    backoff: Backoff
    claim_idle: float

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> RetryPolicy:
        return cls(
            settings.max_attempts,
            Backoff(settings.retry_base, settings.retry_max, settings.retry_jitter),
            settings.claim_idle,
        )

    def spent(self, attempt: int) -> bool:
        """Delivery number `attempt` failed: is it the last one allowed?"""
        return attempt >= self.max_attempts

    def over(self, attempt: int) -> bool:
        """Would delivery number `attempt` exceed the attempts allowed (dead-letter unrun)?"""
        return attempt > self.max_attempts

    def delay(self, attempt: int, message_id: str, exc: BaseException | None = None) -> float:
        """Seconds before the next attempt after delivery `attempt` failed with `exc`."""
        if isinstance(exc, Retry) and exc.delay is not None:
            return exc.delay
        return self.backoff.delay(attempt, message_id)

    def takeover_due_ms(self, deliveries: int, message_id: str) -> int:
        """Idle milliseconds after which another consumer may take an entry over.

        Never before `claim_idle` (the owner refreshes what it holds well inside that), nor
        before the backoff of its last failure has passed, which every consumer computes alike
        (the jitter is derived from the id).
        """
        backoff_ms = int(self.backoff.delay(deliveries, message_id) * 1000)
        return max(int(self.claim_idle * 1000), backoff_ms)

    def suspect_group(self, attempt: int, largest: int) -> int:
        """How many suspects run together, with nothing else, as delivery number `attempt`.

        A suspect was pending on a consumer that stopped without handing it back, so it may
        be what killed it. Suspects first run in groups of `largest` (delivery 2: one crash).
        A group that kills its worker raises the delivery count of all its members together,
        so at their next delivery they run in halves, and so on; at the last attempt allowed
        each runs alone. A poison message is therefore cornered in a few crashes and
        dead-lettered on its own, while a wave of innocent entries abandoned by crashed
        workers runs nearly at full speed.
        """
        if attempt >= self.max_attempts:
            return 1
        return max(largest >> max(attempt - 2, 0), 1)
