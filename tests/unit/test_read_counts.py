"""What each read asks for: within what may be taken, a whole batch where a stream has one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.runtime.leased_reader import leased_count
from worker.runtime.reader import read_count


class TestReadCount:
    @given(wanted=st.integers(1, 10_000), streams=st.integers(1, 64), loops=st.integers(1, 64))
    def test_never_more_than_wanted(self, wanted: int, streams: int, loops: int) -> None:
        """One read never asks for more than the room it was given (COUNT is per stream),
        unless that is less than one entry per stream."""
        for backlog in (False, True):
            count = read_count(wanted, streams, loops, backlog=backlog)
            assert count >= 1 and count * streams <= max(wanted, streams)

    def test_a_loop_with_a_backlog_asks_for_all_that_is_left(self) -> None:
        assert read_count(256, 1, 6, backlog=True) == 256

    def test_a_loop_whose_stream_ran_dry_asks_for_its_share(self) -> None:
        assert read_count(256, 1, 6, backlog=False) == 42


class TestLeasedCount:
    @given(
        batch=st.integers(1, 10_000),
        room=st.integers(1, 30_000),
        partitions=st.integers(1, 64),
        cluster=st.booleans(),
    )
    def test_all_partitions_together_within_the_room(
        self, batch: int, room: int, partitions: int, cluster: bool
    ) -> None:
        count = leased_count(batch, room, partitions, cluster)
        assert 1 <= count <= batch
        assert count * partitions <= max(room, partitions)

    def test_on_a_cluster_each_partition_may_ask_for_a_batch(self) -> None:
        assert leased_count(256, 2 * 256 * 6, 6, cluster=True) == 256
        assert leased_count(256, 2 * 256 * 6, 6, cluster=False) == 42
