"""safe_text: what a terminal could act on is escaped; JSON keeps the exact bytes."""

from __future__ import annotations

import base64

import pytest

from worker.commands.safe_text import json_key, json_text, safe, safe_lines
from worker.commands.support import fail


class TestSafe:
    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
            ("\x1b[2J", "\\x1b[2J"),
            ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
            ("a\nb\tc\rd", "a\\x0ab\\x09c\\x0dd"),
            ("\x7f\x9b", "\\x7f\\x9b"),
            ("abc\u202edef\u2066\u2069\u200b", "abc\\u202edef\\u2066\\u2069\\u200b"),
            ("\u2028\u2029", "\\u2028\\u2029"),
            (b"\xff\xfeok", "\\xff\\xfeok"),
            (b"caf\xc3\xa9", "café"),
            (42, "42"),
        ],
    )
    def test_escapes_what_a_terminal_acts_on(self, value: object, shown: str) -> None:
        """Controls, bidi and format characters and bytes that are not UTF-8 become visible."""
        assert safe(value) == shown

    def test_safe_lines_keeps_newlines_only(self) -> None:
        """A traceback keeps its lines; anything else in it is escaped."""
        assert safe_lines(b"one\x1b\ntwo\r\n") == "one\\x1b\ntwo\\x0d\n"


class TestJson:
    def test_utf8_is_a_plain_string(self) -> None:
        """Valid UTF-8, escape characters included, stays the exact string."""
        assert json_text(b"\x1b[2J\xe2\x80\xae") == "\x1b[2J\u202e"

    def test_other_bytes_are_base64(self) -> None:
        """Bytes that are not UTF-8 become {"base64": ...} of exactly those bytes."""
        value = json_text(b"\xff\x00a")
        assert isinstance(value, dict)
        assert base64.b64decode(value["base64"]) == b"\xff\x00a"

    def test_surrogate_escaped_text_is_its_bytes(self) -> None:
        """Text decoded with surrogateescape goes back to its original bytes."""
        assert json_text(b"x\xff".decode("utf-8", "surrogateescape")) == {"base64": "eP8="}

    def test_keys_are_strings(self) -> None:
        """An object key that is not UTF-8 is written with backslash escapes."""
        assert json_key(b"k\xff") == "k\\xff"


class TestErrorLine:
    def test_an_error_line_is_escaped_too(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Error text can quote what Redis holds (a name, a script's reply): it is escaped."""
        fail("refused: \x1b]0;pwned\x07 \u202ekey")
        err = capsys.readouterr().err
        assert err == "syncworker: error: refused: \\x1b]0;pwned\\x07 \\u202ekey\n"
