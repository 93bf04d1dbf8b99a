"""Suspect groups and the hand-over hash: pure rules every consumer applies alike."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from worker.runtime.backoff import Backoff
from worker.runtime.claims import handover_key, handover_mark, mark_due_ms
from worker.runtime.policy import RetryPolicy


def policy(max_attempts: int) -> RetryPolicy:
    return RetryPolicy(max_attempts, Backoff(), claim_idle=60.0)


class TestSuspectGroups:
    @pytest.mark.parametrize(
        ("attempt", "expected"), [(2, 100), (3, 50), (4, 25), (5, 1), (6, 1), (1, 100)]
    )
    def test_halve_after_each_crash_and_run_alone_at_the_last_attempt(
        self, attempt: int, expected: int
    ) -> None:
        """First takeover: the whole group; each crash halves it; the last attempt runs alone."""
        assert policy(5).suspect_group(attempt, 100) == expected

    @pytest.mark.parametrize("max_attempts", [1, 2, 3, 4, 8])
    def test_every_suspect_runs_alone_before_it_can_be_dead_lettered(
        self, max_attempts: int
    ) -> None:
        """Whatever max_attempts, the last delivery allowed runs alone, so only the entry
        that kills the worker on its own reaches the dead-letter stream."""
        assert policy(max_attempts).suspect_group(max_attempts, 1000) == 1

    def test_never_below_one(self) -> None:
        """Many crashes of a small group still leave groups of one."""
        assert policy(50).suspect_group(40, 8) == 1


class TestHandoverKey:
    @pytest.mark.parametrize("stream", ["orders", "orders{eu}", "a{b", "{x}y", "events:2024"])
    def test_lives_in_the_stream_hash_slot(self, stream: str) -> None:
        """Scripts that touch the stream and its marks work on Redis Cluster."""
        assert key_slot(handover_key(stream).encode()) == key_slot(stream.encode())
        assert handover_key(stream) != stream

    def test_mark_keeps_the_due_time(self) -> None:
        """A mark carries the delivery count to restore and the earliest run time."""
        mark = handover_mark(3, 1_700_000_000_123)
        assert mark.split()[0] == "3"
        assert mark_due_ms(mark) == 1_700_000_000_123
        assert mark_due_ms(mark.encode()) == 1_700_000_000_123
