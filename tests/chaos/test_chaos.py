"""Under faults, syncworker loses nothing and applies nothing twice.

Each scenario runs four `syncworker run` processes on one stream with the chaos handler (the
projection sink plus a run log, tests/chaos/plugin.py), publishes a few thousand events, some
of them hypothesis-generated bad entries, and fires faults at seeded random times. Then it
prints a table and asserts that every entry was applied or dead-lettered exactly once, that
nothing is left pending, and that no entry ever ran in two places at once.

Seeded: the seed is printed, and printed again on failure; `SYNCWORKER_CHAOS_SEED` replays it.
`SYNCWORKER_CHAOS_LONG=1` runs ten times the events with six times the faults.
`SYNCWORKER_TEST_SERVER=valkey` runs it against Valkey (`make chaos-valkey`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.conftest import replay_hint
from tests.chaos.scenario import LONG, Scenario, run
from tests.chaos.tally import Tally

pytestmark = [pytest.mark.redis, pytest.mark.chaos, pytest.mark.timeout(1800 if LONG else 150)]

SCENARIOS = {
    "workers": Scenario("workers", kinds=("sigkill", "sigkill", "sigterm"), faults=6),
    "redis": Scenario("redis", kinds=("redis_restart",), faults=2),
    "network": Scenario("network", kinds=("cut", "stall"), faults=10),
    "huge": Scenario(
        "huge",
        kinds=("cut", "sigkill"),
        faults=3,
        events=1000,
        bad=20,
        huge=3,
        publish_seconds=4,
        drain_seconds=20,
    ),
}


def check(tally: Tally) -> None:
    """The rows that must be zero are zero, and every entry is accounted for once."""
    nonzero = {label: value for label, value in tally.must_be_zero().items() if value}
    assert not nonzero, f"{nonzero} ({replay_hint()})"
    assert tally.published == tally.applied + tally.dead_lettered, replay_hint()


class TestChaos:
    async def test_worker_kills_and_restarts(
        self, chaos_seed: int, chaos_dir: Path, say: Callable[[str], None]
    ) -> None:
        """SIGKILL and SIGTERM workers at random, restart them (half under their old name)."""
        say(replay_hint())
        tally = await run(SCENARIOS["workers"].scaled(), chaos_seed, chaos_dir)
        say(tally.table())
        check(tally)

    async def test_server_restarts_from_aof(
        self, chaos_seed: int, chaos_dir: Path, say: Callable[[str], None]
    ) -> None:
        """kill -9 the server (AOF, appendfsync always) and start it again on its port."""
        say(replay_hint())
        tally = await run(SCENARIOS["redis"].scaled(), chaos_seed, chaos_dir)
        say(tally.table())
        check(tally)

    async def test_cut_and_stalled_links(
        self, chaos_seed: int, chaos_dir: Path, say: Callable[[str], None]
    ) -> None:
        """Cut one worker's connections, or stall its link for up to 1.5 s, at random."""
        say(replay_hint())
        tally = await run(SCENARIOS["network"].scaled(), chaos_seed, chaos_dir)
        say(tally.table())
        check(tally)

    async def test_huge_bad_entries_under_faults(
        self, chaos_seed: int, chaos_dir: Path, say: Callable[[str], None]
    ) -> None:
        """Bad entries with 4,100 to 6,000 fields are dead-lettered too, through cuts and kills."""
        say(replay_hint())
        tally = await run(SCENARIOS["huge"].scaled(), chaos_seed, chaos_dir)
        say(tally.table())
        check(tally)
