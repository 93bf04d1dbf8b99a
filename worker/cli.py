"""The `syncworker` command: parse options, build settings, configure logging, run.

Each subcommand lives in `worker.commands` and registers itself on the parser; this module
only wires them together and turns configuration errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.commands import COMMANDS
from worker.errors import ConfigError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"syncworker: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="syncworker",
        description="A durable Redis Streams worker. Settings come from SYNCWORKER_* "
        "environment variables, or from a TOML file given with --config.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"syncworker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
