"""The chaos suite's own detectors find what they look for (so a green run means something)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.events import draw_bad_entries, plan
from tests.chaos.fleet import Life
from tests.chaos.plugin import defect
from tests.chaos.runs import claimed, hand_overs, overlapping, read_runs, reclaims

S = 1_000_000_000  # ns


def write_runs(directory: Path, consumer: str, pid: int, lines: list[str]) -> None:
    (directory / f"{consumer}.{pid}.runs").write_text("".join(line + "\n" for line in lines))


class TestOverlap:
    def test_runs_in_two_processes_at_once_overlap(self, tmp_path: Path) -> None:
        """An entry started in one process while it still ran in another is reported."""
        write_runs(tmp_path, "w0", 10, [f"S 1-1 {1 * S}", f"E 1-1 {3 * S} applied"])
        write_runs(tmp_path, "w1", 11, [f"S 1-1 {2 * S}", f"E 1-1 {4 * S} stale"])
        assert list(overlapping(read_runs(tmp_path, []))) == ["1-1"]

    def test_a_killed_run_lasts_until_its_process_died(self, tmp_path: Path) -> None:
        """A run with no end line ends at its process's death, not at its start."""
        write_runs(tmp_path, "w0", 10, [f"S 1-1 {1 * S}"])
        write_runs(tmp_path, "w0", 12, [f"S 1-1 {2 * S}", f"E 1-1 {3 * S} applied"])
        dead_late = [Life("w0", 10, 0, ended_ns=5 * S)]
        dead_early = [Life("w0", 10, 0, ended_ns=int(1.5 * S))]
        assert list(overlapping(read_runs(tmp_path, dead_late))) == ["1-1"]
        assert overlapping(read_runs(tmp_path, dead_early)) == {}

    def test_runs_one_after_another_do_not_overlap(self, tmp_path: Path) -> None:
        """A retry after a failed run, even in another process, is no overlap."""
        write_runs(tmp_path, "w0", 10, [f"S 1-1 {1 * S}", f"E 1-1 {2 * S} error"])
        write_runs(tmp_path, "w1", 11, [f"S 1-1 {2 * S}", f"E 1-1 {3 * S} applied"])
        assert overlapping(read_runs(tmp_path, [])) == {}


class TestHandOver:
    def test_time_until_the_last_pending_entry_ran_again(self, tmp_path: Path) -> None:
        """Hand-over is from the exit to the first new run of the slowest pending entry."""
        write_runs(tmp_path, "w1", 11, [f"S 1-1 {3 * S}", f"S 1-2 {4 * S}", f"S 1-3 {9 * S}"])
        killed = Life("w0", 10, 0, ended_ns=2 * S, end="sigkill", pending_at_signal=["1-1", "1-2"])
        runs = read_runs(tmp_path, [killed])
        assert hand_overs(runs, [killed], "sigkill") == [2.0]
        assert hand_overs(runs, [killed], "sigterm") == []

    def test_claims_are_read_from_the_worker_logs(self, tmp_path: Path) -> None:
        """A takeover logged after the exit counts; one from before it, or another name, not."""
        lines = [
            '{"event": "message.reclaimed", "from_consumer": "w0", "message_id": "1-1", '
            '"timestamp": "2026-01-01T00:00:03.500000Z"}',
            '{"event": "message.reclaimed", "from_consumer": "w0", "message_id": "1-2", '
            '"timestamp": "2026-01-01T00:00:01.000000Z"}',
            '{"event": "message.reclaimed", "from_consumer": "w9", "message_id": "1-3", '
            '"timestamp": "2026-01-01T00:00:09.000000Z"}',
            "not json",
        ]
        (tmp_path / "w1.0.log").write_text("\n".join(lines))
        exit_at = datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC).timestamp()
        life = Life("w0", 10, 0, ended_wall=exit_at, pending_at_signal=["1-1", "1-2", "1-3"])
        assert claimed(reclaims(tmp_path), life) == (1, 1.5)


class TestEntries:
    def test_every_bad_entry_is_rejected_and_every_good_one_accepted(self) -> None:
        """The plan's bad entries all fail the handler's schema; its good ones all pass it."""
        entries = plan(random.Random(7), 7, 300, 100)
        assert sum(not e.good for e in entries) == 100
        assert all((defect(e.fields) is None) == e.good for e in entries)

    def test_the_same_seed_draws_the_same_bad_entries(self) -> None:
        """A replayed seed publishes the very same bad entries."""
        assert draw_bad_entries(42, 20) == draw_bad_entries(42, 20)
        assert draw_bad_entries(42, 20) != draw_bad_entries(43, 20)

    def test_huge_entries_are_bad_and_huge(self) -> None:
        """The huge bad entries fail the schema and carry more than 4,000 fields."""
        entries = plan(random.Random(3), 3, 50, 10, huge=2)
        huge = [e for e in entries if len(e.fields) > 4000]
        assert len(huge) == 2
        assert all(not e.good and defect(e.fields) is not None for e in huge)
