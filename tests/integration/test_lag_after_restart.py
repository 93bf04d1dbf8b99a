"""After a restart from AOF, Redis reports no lag until the group catches up: we estimate it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.ops_helpers import value
from worker.admin import lag
from worker.admin.groups import GroupState, read_group_states
from worker.ops.metrics import GroupGauges, WorkerCollector
from worker.redis_server import RedisServer
from worker.runtime.stats import Stats

pytestmark = pytest.mark.redis


@pytest.fixture
async def restarted() -> AsyncIterator[Redis]:
    """An AOF server holding `s` (10 entries) and group `g` (4 delivered), then restarted."""
    with RedisServer(appendonly=True) as server:
        client = Redis.from_url(server.url)
        for n in range(10):
            await client.xadd("s", {"n": str(n)})
        await client.xgroup_create("s", "g", id="0")
        await client.xreadgroup("g", "c", {"s": ">"}, count=4)
        await client.aclose()
        server.restart()
        client = Redis.from_url(server.url)
        try:
            (info,) = await client.xinfo_groups("s")
            assert info["lag"] is None  # what Redis 7.0 reports until the group catches up
            yield client
        finally:
            await client.aclose()


def scrape(states: dict[str, GroupState]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    collector = WorkerCollector(Stats(), "g", {"s": ["h"]}, dict, GroupGauges(states))
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


class TestLagAfterRestart:
    @pytest.mark.redis70
    async def test_lag_is_counted_and_marked_estimated(self, restarted: Redis) -> None:
        """The undelivered entries are counted, and the state says the lag is an estimate."""
        (state,) = await read_group_states(restarted, ["s"], "g", ":dlq")
        assert state.lag == 6 and state.lag_estimated

    @pytest.mark.redis70
    async def test_gauge_stays_present_with_its_marker(self, restarted: Redis) -> None:
        """syncworker_group_lag keeps its series (alerts see it); a second gauge says 1."""
        (state,) = await read_group_states(restarted, ["s"], "g", ":dlq")
        found = scrape({"s": state})
        assert value(found, "syncworker_group_lag", stream="s", group="g") == 6
        assert value(found, "syncworker_group_lag_estimated", stream="s", group="g") == 1

    @pytest.mark.redis70
    async def test_beyond_the_scan_limit(
        self, restarted: Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A lag longer than the scan limit is the length minus the delivered entries."""
        monkeypatch.setattr(lag, "LAG_SCAN_LIMIT", 5)
        (state,) = await read_group_states(restarted, ["s"], "g", ":dlq")
        assert state.lag == 6 and state.lag_estimated

    @pytest.mark.redis70
    async def test_both_sides_beyond_the_limit_are_interpolated(
        self, restarted: Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When neither side can be counted, the estimate stays within what is known."""
        monkeypatch.setattr(lag, "LAG_SCAN_LIMIT", 2)
        (state,) = await read_group_states(restarted, ["s"], "g", ":dlq")
        assert state.lag is not None and 2 <= state.lag <= 8 and state.lag_estimated

    @pytest.mark.redis70
    async def test_user_without_scripts_keeps_the_other_gauges(self, restarted: Redis) -> None:
        """An ACL user that may not run scripts gets no lag, but still every other figure."""
        await restarted.acl_setuser(
            "noscript", enabled=True, nopass=True, keys=["*"], commands=["+@all", "-@scripting"]
        )
        await restarted.execute_command("AUTH", "noscript", "x")
        (state,) = await read_group_states(restarted, ["s"], "g", ":dlq")
        assert state.lag is None and not state.lag_estimated
        assert state.pending == 4 and state.length == 10

    def test_interpolation_follows_the_timestamps(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A quarter of the time span delivered: three quarters of the entries are lag."""
        monkeypatch.setattr(lag, "LAG_SCAN_LIMIT", 10)
        assert lag.interpolate(100, first_ms=0, last_ms=100, delivered_ms=25) == 75
        assert lag.interpolate(100, first_ms=0, last_ms=100, delivered_ms=99) == 10

    async def test_exact_lag_is_not_marked(self, redis: Redis, names: dict[str, str]) -> None:
        """When Redis knows the lag, it is used as is, and the marker gauge says 0."""
        stream, group = names["stream"], names["group"]
        for n in range(5):
            await redis.xadd(stream, {"n": str(n)})
        await redis.xgroup_create(stream, group, id="0")
        (state,) = await read_group_states(redis, [stream], group, ":dlq")
        assert state.lag == 5 and not state.lag_estimated
        found = WorkerCollector(Stats(), group, {stream: ["h"]}, dict, GroupGauges({stream: state}))
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in found.collect()
            for s in family.samples
        }
        assert value(samples, "syncworker_group_lag_estimated", stream=stream, group=group) == 0

    @pytest.mark.redis70
    async def test_status_marks_the_estimate(self, restarted: Redis) -> None:
        """`syncworker status` shows an estimated lag with a ~, and says so in JSON."""
        from worker.commands.status import as_json, render

        states = await read_group_states(restarted, ["s"], "g", ":dlq")
        assert "~6" in render(states).splitlines()[1]
        assert as_json("g", states)["streams"][0]["lag_estimated"] is True
