"""The `syncworker` command: parse options, build settings, configure logging, run.

Each subcommand lives in `worker.commands` and registers itself on the parser; this module
only wires them together and turns configuration errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata

from worker.commands import COMMANDS
from worker.errors import ConfigError
from worker.logs import Redactor, secrets_in_environment

EXIT_FAILED = 1
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
    parser.add_argument("--version", action="version", version=f"syncworker {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("syncworker")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _import_from_cwd() -> None:
    """Put the working directory first on sys.path, as `python -m worker` does.

    A console script's sys.path holds its own bin directory, not the working directory, so
    `SYNCWORKER_HANDLERS=myapp.handlers:sync syncworker run` would not find `myapp` otherwise.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    _import_from_cwd()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"syncworker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug or an unexpected reply: keep the traceback, which is what a report needs,
        # but never with a configured password in it.
        redactor = Redactor(secrets_in_environment(os.environ))
        print(redactor.redact(traceback.format_exc()), file=sys.stderr, end="")
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
