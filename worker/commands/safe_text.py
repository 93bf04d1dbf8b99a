"""Text from Redis, made safe for a terminal or exact for JSON.

Whoever can write a stream entry chooses the bytes that `dlq` and `status` print: field names
and values, error messages, consumer names. A terminal acts on some of them (ESC sequences that
clear the screen, move the cursor, set the window title or hide a link; bidi overrides such as
U+202E that reorder what the operator reads), and some are not UTF-8 at all. So:

- human output passes every value from Redis through `safe` (or `safe_lines` for a traceback):
  controls (C0, DEL, C1), format characters (bidi, zero-width), line and paragraph separators
  are written as visible escapes (`\\x1b`, `\\u202e`), and bytes that are not UTF-8 as `\\xff`;
- `--json` output passes values through `json_text`: a value that is valid UTF-8 is a JSON
  string, exact (JSON escapes make it safe to print); any other value is an object
  `{"base64": "<the exact bytes, standard base64>"}`. Object keys must be strings: a key that
  is not UTF-8 is written with `\\xff` escapes (`json_key`), and the exact form sits elsewhere
  in the same document (the `pairs` of a dead letter).

Internally, text from Redis is decoded with `surrogateescape` (`decode`), which never fails
and keeps the exact bytes recoverable.
"""

from __future__ import annotations

import base64
import unicodedata
from typing import Any

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories a terminal may act on: controls, format (bidi, zero-width), surrogates
(here: bytes that were not UTF-8), line and paragraph separators."""


def decode(value: Any) -> str:
    """Bytes from Redis as text that never fails: bytes that are not UTF-8 become surrogates."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def safe(value: Any) -> str:
    """`value` for one line of a terminal: every character it could act on is escaped."""
    text = decode(value)
    if text.isprintable():  # the usual case: nothing to escape
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


def safe_lines(value: Any) -> str:
    """Like `safe`, but newlines stay: for multi-line values such as a traceback."""
    return "\n".join(safe(line) for line in decode(value).split("\n"))


def json_text(value: Any) -> str | dict[str, str]:
    """`value` for JSON: the string when it is UTF-8, else {"base64": <its exact bytes>}."""
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def json_key(value: Any) -> str:
    """`value` as a JSON object key: the string when it is UTF-8, else with `\\xff` escapes."""
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
