"""Safe trimming never removes an entry that some group has not read and acknowledged."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from worker.admin.trim import NoGroups, NoStream, TrimResult, safe_trim
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

# Per group: how many entries it has been delivered, and which of those it acknowledged.
group_positions = st.integers(min_value=0, max_value=20).flatmap(
    lambda n: st.tuples(
        st.just(n), st.lists(st.integers(min_value=0, max_value=20), max_size=4).map(set)
    )
)


def trim(url: str, stream: str, **options: bool) -> TrimResult:
    async def run() -> TrimResult:
        client = Redis.from_url(url)
        try:
            return await safe_trim(client, stream, **options)
        finally:
            await client.aclose()

    return asyncio.run(run())


class TestSafeTrim:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        length=st.integers(min_value=1, max_value=20),
        groups=st.lists(group_positions, min_size=1, max_size=4),
        approximate=st.booleans(),
    )
    def test_keeps_every_entry_a_group_still_needs(
        self,
        redis_server: RedisServer,
        length: int,
        groups: list[tuple[int, set[int]]],
        approximate: bool,
    ) -> None:
        """Pending and undelivered entries of every group survive; exact trims remove the rest
        below the oldest of them."""
        r = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
        stream = f"trim:{uuid.uuid4().hex[:10]}"
        try:
            # Given several groups at different positions, each with some entries unacked
            ids = [r.xadd(stream, {"n": str(n)}) for n in range(length)]
            needed: set[str] = set()
            for index, (delivered, acked) in enumerate(groups):
                group = f"g{index}"
                delivered = min(delivered, length)
                r.xgroup_create(stream, group, id="0")
                if delivered:
                    r.xreadgroup(group, "c", {stream: ">"}, count=delivered)
                done = [ids[i] for i in sorted(acked) if i < delivered]
                if done:
                    r.xack(stream, group, *done)
                needed |= {ids[i] for i in range(length) if i >= delivered or ids[i] not in done}

            # When the stream is trimmed
            result = trim(redis_server.url, stream, approximate=approximate)

            # Then nothing any group needs is gone
            remaining = [entry_id for entry_id, _ in r.xrange(stream)]
            assert needed <= set(remaining)
            assert result.removed == length - len(remaining)
            if not approximate:
                oldest_needed = min(needed, key=_order, default=None)
                expected = [i for i in ids if oldest_needed and _order(i) >= _order(oldest_needed)]
                assert remaining == expected
        finally:
            r.delete(stream)
            r.close()

    def test_refuses_a_stream_without_groups(self, redis_server: RedisServer) -> None:
        """Without a group nothing says which entries are done with, so none is removed."""
        r = sync_redis.Redis.from_url(redis_server.url)
        stream = f"trim:{uuid.uuid4().hex[:10]}"
        r.xadd(stream, {"n": "0"})
        with pytest.raises(NoGroups):
            trim(redis_server.url, stream)
        with pytest.raises(NoStream):
            trim(redis_server.url, stream + ":missing")
        assert r.xlen(stream) == 1
        r.close()

    def test_dry_run_removes_nothing(self, redis_server: RedisServer) -> None:
        """A dry run reports each group's boundary and leaves the stream as it was."""
        r = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
        stream = f"trim:{uuid.uuid4().hex[:10]}"
        ids = [r.xadd(stream, {"n": str(n)}) for n in range(5)]
        r.xgroup_create(stream, "a", id=ids[2])  # delivered through ids[2], nothing pending
        result = trim(redis_server.url, stream, dry_run=True)
        ms, seq = _order(ids[2])
        after = f"{ms}-{seq + 1}"  # the smallest id above the group's last delivered one
        assert (result.removed, result.bound, result.groups) == (0, after, {"a": after})
        assert r.xlen(stream) == 5
        r.close()


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)
