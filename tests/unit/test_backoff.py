"""The retry delay policy."""

from __future__ import annotations

import pytest

from worker.runtime.backoff import Backoff


class TestBackoff:
    @pytest.mark.parametrize(
        ("attempt", "expected"),
        [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 256.0), (10, 300.0), (500, 300.0)],
    )
    def test_doubles_from_the_base_up_to_the_cap(self, attempt: int, expected: float) -> None:
        """Without jitter the delay is base * 2^(attempt-1), capped."""
        assert Backoff(base=1.0, cap=300.0, jitter=0.0).delay(attempt, "1-0") == expected

    @pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
    def test_jitter_only_shortens_and_stays_within_its_fraction(self, attempt: int) -> None:
        """Jittered delays lie in [(1 - jitter) * d, d] for many message ids."""
        plain = Backoff(1.0, 60.0, 0.0).delay(attempt)
        for n in range(200):
            delay = Backoff(1.0, 60.0, 0.25).delay(attempt, f"{n}-0")
            assert plain * 0.75 <= delay <= plain

    def test_jitter_is_the_same_on_every_consumer(self) -> None:
        """Two policies compute the same delay for the same entry and attempt."""
        assert Backoff(jitter=0.5).delay(3, "17-4") == Backoff(jitter=0.5).delay(3, "17-4")
        delays = {Backoff(jitter=0.5).delay(3, f"{n}-0") for n in range(20)}
        assert len(delays) > 10, "different entries should spread out"

    @pytest.mark.parametrize("kwargs", [{"base": -1}, {"cap": -2}, {"jitter": 1.5}])
    def test_impossible_policies_are_refused(self, kwargs: dict[str, float]) -> None:
        """Negative times and jitter outside 0..1 raise ValueError."""
        with pytest.raises(ValueError):
            Backoff(**kwargs)
