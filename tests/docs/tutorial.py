"""docs/tutorial.md read as a script: its marked blocks, in order, and how to run them.

Markers are HTML comments on the line before a fenced block (invisible when rendered):

- `<!-- tutorial: run -->`: a shell block, run with bash; a block marked
  `<!-- tutorial: output -->` right after it holds lines its output must contain, in order
  (`<...>` matches anything, runs of spaces any whitespace).
- `<!-- tutorial: run-until -->`: likewise, run again until the output matches (the worker
  may need a moment, as it would for a reader).
- `<!-- tutorial: background -->`: a long-running command (the worker), started and left running.
- `<!-- tutorial: stop -->` (no block): stop the background command, as Ctrl-C does.
- `<!-- tutorial: file PATH -->`: write the block to PATH.
- `<!-- tutorial: skip: WHY -->`: not run, for the reason given (Docker, say).

A shell block without a marker is an error: every command of the tutorial is run or says why not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!-- tutorial: (?P<kind>[a-z-]+)(?::? (?P<arg>.*?))? -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


@dataclass
class Step:
    kind: str
    """run, run-until, background, stop, file, skip."""
    arg: str = ""
    body: str = ""
    expected: str | None = None
    line: int = 0


def parse(text: str) -> list[Step]:
    """The steps of a tutorial, in order.

    Raises:
        ValueError: a shell block without a marker, or a marker without its block.
    """
    lines = text.splitlines()
    steps: list[Step] = []
    pending: Step | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line.strip())
        fence = FENCE.match(line)
        if marker:
            if pending is not None:
                raise ValueError(f"line {pending.line}: marker {pending.kind!r} without a block")
            step = Step(marker["kind"], marker["arg"] or "", line=i + 1)
            if step.kind == "stop":
                steps.append(step)
            else:
                pending = step
            i += 1
            continue
        if fence and fence["lang"]:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = "\n".join(lines[i + 1 : end]) + "\n"
            if pending is None:
                if fence["lang"] in ("sh", "bash", "shell"):
                    raise ValueError(f"line {i + 1}: a shell block without a tutorial marker")
            elif pending.kind == "output":
                if not steps or steps[-1].kind not in ("run", "run-until"):
                    raise ValueError(f"line {pending.line}: output after no command")
                steps[-1].expected = body
            else:
                pending.body = body
                steps.append(pending)
            pending = None
            i = end + 1
            continue
        i += 1
    if pending is not None:
        raise ValueError(f"line {pending.line}: marker {pending.kind!r} without a block")
    return steps


def _pattern(expected: str) -> re.Pattern[str]:
    parts = re.split(r"(<[^>]+>|\s+)", expected.strip())
    regex = "".join(
        ".*?" if p.startswith("<") and p.endswith(">") else r"\s+" if p.isspace() else re.escape(p)
        for p in parts
        if p
    )
    return re.compile(regex)


def missing(expected: str, output: str) -> str | None:
    """The first expected line the output lacks (lines match in order), or None."""
    lines = output.splitlines()
    at = 0
    for want in expected.splitlines():
        if not want.strip():
            continue
        pattern = _pattern(want)
        while at < len(lines) and not pattern.search(lines[at]):
            at += 1
        if at == len(lines):
            return want
        at += 1
    return None


def files(steps: list[Step]) -> dict[str, str]:
    """The final content of every file the tutorial writes."""
    return {s.arg: s.body for s in steps if s.kind == "file"}


def read(path: Path) -> list[Step]:
    """The steps of the tutorial at `path`."""
    return parse(path.read_text(encoding="utf-8"))
