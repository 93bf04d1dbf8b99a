"""Operator commands on hostile stream content: nothing crashes, no control character reaches
the terminal, and `--json` keeps every value exact (bytes that are not UTF-8 as base64)."""

from __future__ import annotations

import base64
import json
import unicodedata
import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.cli import main
from worker.redis_server import RedisServer

pytestmark = pytest.mark.redis

UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
"""Controls, format characters (bidi overrides, zero-width), surrogates, line separators."""

HOSTILE = "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\x\x1b]8;;\x1b\\\u202e\u2066\x9b\r"


def unsafe_characters(output: str) -> list[str]:
    """The characters of `output` a terminal could act on (a newline ends a line, and is fine)."""
    return [c for c in output if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]


def decode_json_text(value: str | dict[str, str]) -> bytes:
    """The exact bytes a JSON value stands for: a string is UTF-8, {"base64": ...} is not."""
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return value.encode()


def dead_letter(
    r: sync_redis.Redis, stream: str, pairs: Sequence[tuple[bytes, bytes]], **meta: bytes | str
) -> str:
    """Write a dead letter in the worker's format: original fields, metadata, `dlq_fields`."""
    fields: list[bytes | str] = [item for pair in pairs for item in pair]
    metadata = {"stream": stream, "id": "1-0", "group": "g", "consumer": "c", **meta}
    for name, value in metadata.items():
        fields += ["dlq_" + name, value]
    fields += ["dlq_fields", str(len(pairs))]
    entry_id: bytes = r.execute_command("XADD", stream + ":dlq", "*", *fields)
    return entry_id.decode()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.usefixtures("env")
class TestTerminalEscapes:
    def test_dlq_commands_show_escape_sequences_as_visible_text(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Escape sequences and bidi overrides in fields and metadata are printed as `\\x1b`,
        `\\u202e`: the operator sees them, the terminal does not act on them."""
        stream = names["stream"]
        hostile = HOSTILE.encode()
        dead_id = dead_letter(
            r,
            stream,
            [(b"type", hostile), (b"key", hostile), (hostile, hostile)],
            error=hostile,
            error_type=hostile,
            handler=hostile,
            traceback=b"Traceback\n  line " + hostile,
        )
        for argv in (
            ["dlq", "list", stream],
            ["dlq", "show", stream, dead_id],
            ["dlq", "replay", stream, "--all", "--dry-run"],
            ["dlq", "replay", stream, "--id", dead_id, "--dry-run"],
        ):
            code, output = run(capsys, *argv)
            assert code == 0, output
            assert unsafe_characters(output) == [], argv
            assert "\\x1b[2J" in output and "\\u202e" in output, argv

    def test_json_keeps_the_exact_characters(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json is exact: the escape characters come back as they were written."""
        stream = names["stream"]
        dead_id = dead_letter(r, stream, [(b"type", HOSTILE.encode())], error=HOSTILE)
        code, output = run(capsys, "dlq", "show", stream, dead_id, "--json")
        assert code == 0
        letter = json.loads(output)
        assert letter["pairs"] == [["type", HOSTILE]]
        assert letter["meta"]["error"] == HOSTILE

    def test_status_escapes_consumer_and_stream_names(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A consumer or stream name with escape sequences is printed escaped by status."""
        stream, group = names["stream"] + "\x1b[2J", names["group"]
        r.xgroup_create(stream, group, id="0", mkstream=True)
        r.xgroup_createconsumer(stream, group, "eve" + HOSTILE)
        code, output = run(capsys, "status", "--stream", stream, "--group", group)
        assert code == 0, output
        assert unsafe_characters(output) == []
        assert "eve\\x1b[2J" in output and "\\x1b[2J" in output.splitlines()[1]


@pytest.mark.usefixtures("env")
class TestNotUtf8:
    def test_dlq_commands_show_bytes_escaped(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Field names, values and metadata that are not UTF-8 are shown as `\\xff`."""
        stream = names["stream"]
        dead_id = dead_letter(
            r, stream, [(b"type", b"\xff\xfe"), (b"\xc3(", b"v\x80")], error=b"bad \xff"
        )
        for argv in (
            ["dlq", "list", stream],
            ["dlq", "show", stream, dead_id],
            ["dlq", "replay", stream, "--all", "--dry-run"],
        ):
            code, output = run(capsys, *argv)
            assert code == 0, output
            assert "\\xff\\xfe" in output, argv
            assert unsafe_characters(output) == []
        _, shown = run(capsys, "dlq", "show", stream, dead_id)
        assert "\\xc3(: v\\x80" in shown and "bad \\xff" in shown

    def test_json_gives_base64_for_bytes_that_are_not_utf8(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json writes a value that is not UTF-8 as {"base64": ...} of its exact bytes."""
        stream = names["stream"]
        pairs = [(b"type", b"\xff\xfe"), (b"\xc3(", b"ok")]
        dead_id = dead_letter(r, stream, pairs, error=b"bad \xff")
        for argv in (["dlq", "show", stream, dead_id, "--json"], ["dlq", "list", stream, "--json"]):
            code, output = run(capsys, *argv)
            assert code == 0
            report = json.loads(output)
            letter = report["entries"][0] if "entries" in report else report
            assert [(decode_json_text(k), decode_json_text(v)) for k, v in letter["pairs"]] == pairs
            assert letter["pairs"][1][1] == "ok"
            assert decode_json_text(letter["meta"]["error"]) == b"bad \xff"

    def test_status_shows_a_consumer_name_that_is_not_utf8(
        self, r: sync_redis.Redis, names: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """status prints a non-UTF-8 consumer name escaped, and as base64 in --json."""
        stream, group = names["stream"], names["group"]
        r.xgroup_create(stream, group, id="0", mkstream=True)
        r.xgroup_createconsumer(stream, group, b"bob\xff")
        code, output = run(capsys, "status", "--stream", stream, "--group", group)
        assert code == 0, output
        assert "consumer bob\\xff:" in output
        code, output = run(capsys, "status", "--stream", stream, "--group", group, "--json")
        assert code == 0, output
        (consumer,) = json.loads(output)["streams"][0]["consumers"]
        assert decode_json_text(consumer["name"]) == b"bob\xff"


names_and_values = st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=24)), max_size=4)
stream_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8
).map(lambda s: f"fuzz:{uuid.uuid4().hex[:8]}:{s}")


@pytest.mark.usefixtures("env")
class TestFuzz:
    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        pairs=names_and_values,
        metadata=st.binary(max_size=24),
        consumer=st.binary(min_size=1, max_size=12),
        stream=stream_names,
    )
    def test_random_bytes_never_crash_or_reach_the_terminal(
        self,
        r: sync_redis.Redis,
        capsys: pytest.CaptureFixture[str],
        pairs: list[tuple[bytes, bytes]],
        metadata: bytes,
        consumer: bytes,
        stream: str,
    ) -> None:
        """Whatever bytes an entry or a name holds: exit 0, no control character in human
        output, and --json gives back the exact bytes."""
        pairs = pairs or [(b"type", metadata)]
        dead_id = dead_letter(r, stream, pairs, error=metadata, handler=metadata)
        r.xgroup_create(stream, "g", id="0", mkstream=True)
        r.xgroup_createconsumer(stream, "g", consumer)
        for argv in (
            ["dlq", "list", stream],
            ["dlq", "show", stream, dead_id],
            ["dlq", "replay", stream, "--all", "--dry-run"],
            ["status", "--stream", stream, "--group", "g"],
        ):
            code, output = run(capsys, *argv)
            assert code == 0, (argv, output)
            assert unsafe_characters(output) == [], (argv, output)
        code, output = run(capsys, "dlq", "show", stream, dead_id, "--json")
        assert code == 0
        letter = json.loads(output)
        assert [(decode_json_text(k), decode_json_text(v)) for k, v in letter["pairs"]] == pairs
        code, output = run(capsys, "status", "--stream", stream, "--group", "g", "--json")
        (state,) = json.loads(output)["streams"]
        assert [decode_json_text(c["name"]) for c in state["consumers"]] == [consumer]
