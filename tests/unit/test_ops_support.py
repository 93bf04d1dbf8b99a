"""Pure helpers of the operations commands: ids, durations, dead-letter parsing, HTTP."""

from __future__ import annotations

import argparse

import pytest

from tests.ops_helpers import http_request
from worker.admin.deadletters import DeadLetterEntry, next_id
from worker.cli import main
from worker.commands.support import duration, entry_id, routed_streams, table
from worker.errors import ConfigError
from worker.ops.httpserver import HttpServer, Response
from worker.settings import Route, WorkerSettings


class TestIds:
    @pytest.mark.parametrize(
        ("entry", "following"),
        [("5-0", "5-1"), ("1700000000000-41", "1700000000000-42"), (f"7-{2**64 - 1}", "8-0")],
    )
    def test_next_id(self, entry: str, following: str) -> None:
        """The smallest id above an id, including across the sequence's maximum."""
        assert next_id(entry) == following

    def test_entry_id_accepts_ids_and_rejects_the_rest(self) -> None:
        """Ids with or without a sequence pass; anything else is a usage error."""
        assert entry_id("1700000000000-0") == "1700000000000-0"
        assert entry_id("1700000000000") == "1700000000000"
        for bad in ("abc", "1-", "-1", "1-2-3", ""):
            with pytest.raises(argparse.ArgumentTypeError):
                entry_id(bad)


class TestFormatting:
    @pytest.mark.parametrize(
        ("seconds", "shown"),
        [
            (None, "-"),
            (0.25, "250ms"),
            (4.24, "4.2s"),
            (190, "3m10s"),
            (7500, "2h05m"),
            (3 * 86400 + 3600 * 4, "3d04h"),
        ],
    )
    def test_duration(self, seconds: float | None, shown: str) -> None:
        """Durations read at a glance in the status table."""
        assert duration(seconds) == shown

    def test_table_aligns_columns(self) -> None:
        """Columns line up and trailing spaces are dropped."""
        assert table([["A", "BB"], ["ccc", "d"]]) == "A    BB\nccc  d"


class TestDeadLetterEntry:
    def test_parse_splits_original_fields_from_metadata(self) -> None:
        """Without `dlq_fields` (older dead letters), fields prefixed dlq_ are metadata; the
        rest are the original entry, bytes intact."""
        flat = [b"type", b"t", b"data", b"\xff", b"dlq_error", b"boom", b"dlq_attempts", b"5"]
        letter = DeadLetterEntry.parse(b"9-0", flat)
        assert letter.id == "9-0"
        assert letter.fields == {b"type": b"t", b"data": b"\xff"}
        assert letter.meta == {"error": "boom", "attempts": "5"}

    def test_dlq_fields_counts_the_original_pairs(self) -> None:
        """With `dlq_fields` last, that many leading pairs are original, repeats and dlq_ names
        included, and the rest is metadata."""
        flat = [b"a", b"1", b"a", b"2", b"dlq_error", b"mine"]
        flat += [b"dlq_error", b"boom", b"dlq_id", b"1-0", b"dlq_fields", b"3"]
        letter = DeadLetterEntry.parse(b"9-0", flat)
        assert letter.pairs == [(b"a", b"1"), (b"a", b"2"), (b"dlq_error", b"mine")]
        assert letter.meta == {"error": "boom", "id": "1-0"}


class TestHttpServer:
    async def test_routes_404_405_and_head(self) -> None:
        """Known paths answer, unknown ones 404, other methods 405, HEAD omits the body."""

        async def ok() -> Response:
            return Response(200, b"fine\n")

        server = HttpServer("127.0.0.1", 0, {"/x": ok})
        await server.start()
        try:
            assert await http_request(server.port, "GET /x?y=1") == (200, b"fine\n")
            assert (await http_request(server.port, "GET /nope"))[0] == 404
            assert (await http_request(server.port, "POST /x"))[0] == 405
            assert await http_request(server.port, "HEAD /x") == (200, b"")
        finally:
            await server.stop()


class TestRoutedStreams:
    def test_from_routes_and_handlers_or_explicit(self) -> None:
        """Routes name their stream without importing; handlers are loaded to learn theirs."""
        settings = WorkerSettings(
            metrics_port=0,
            handlers=["tests.integration.plugins:noop"],
            routes=[Route(stream="orders", handler="not.imported:at_all")],
        )
        assert routed_streams(settings, None) == ["orders", "plugins:noop"]
        assert routed_streams(settings, ["x", "x", "y"]) == ["x", "y"]

    def test_nothing_routed_is_a_config_error(self) -> None:
        """Without --stream and without routes the command cannot guess."""
        with pytest.raises(ConfigError, match="no stream given"):
            routed_streams(WorkerSettings(metrics_port=0), None)


class TestHelp:
    @pytest.mark.parametrize(
        "command",
        [
            ["status"],
            ["dlq"],
            ["dlq", "list"],
            ["dlq", "show"],
            ["dlq", "replay"],
            ["dlq", "purge"],
            ["publish"],
            ["consumers"],
            ["consumers", "prune"],
            ["trim"],
        ],
    )
    def test_every_command_has_help_with_an_example(
        self, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help exits 0 and shows at least one example invocation."""
        with pytest.raises(SystemExit) as exc:
            main([*command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "example" in out and f"syncworker {command[0]}" in out
