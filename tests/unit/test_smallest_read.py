"""How many freed places the read loop waits for before it tops the queue up."""

from __future__ import annotations

import pytest

from worker.runtime.reader import smallest_read
from worker.settings import default_batch_size


class TestSmallestRead:
    @pytest.mark.parametrize(
        ("concurrency", "expected"), [(1, 128), (16, 128), (64, 128), (256, 512), (1000, 2000)]
    )
    def test_half_of_the_default_read(self, concurrency: int, expected: int) -> None:
        assert smallest_read(default_batch_size(concurrency), concurrency) == expected

    def test_never_more_than_a_whole_read(self) -> None:
        assert smallest_read(batch_size=10, concurrency=64) == 10

    def test_half_of_a_set_read_when_lanes_are_few(self) -> None:
        assert smallest_read(batch_size=1000, concurrency=4) == 500

    def test_one_place_per_lane_when_a_set_read_is_small(self) -> None:
        assert smallest_read(batch_size=100, concurrency=64) == 64
