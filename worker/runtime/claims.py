"""Reading XCLAIM replies: what the retry scan and takeover share."""

from __future__ import annotations

from typing import Any

from worker.connection import text


def entries_by_id(claimed: list[Any]) -> dict[str, dict[bytes, bytes]]:
    """Entry id -> fields of a claim's reply, leaving out entries deleted while pending."""
    found: dict[str, dict[bytes, bytes]] = {}
    for item in claimed or ():
        if not item or item[0] is None or item[1] is None:
            continue
        found[text(item[0])] = item[1]
    return found
