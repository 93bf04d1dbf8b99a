"""What every subcommand shares: the --config option and settings loading."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from worker.settings import WorkerSettings, load_settings, unknown_variables


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=os.environ.get("SYNCWORKER_CONFIG"),
        help="TOML file with settings and [[routes]] (default: $SYNCWORKER_CONFIG); "
        "SYNCWORKER_* environment variables override it",
    )


def settings_from(args: argparse.Namespace, **overrides: Any) -> WorkerSettings:
    """Settings from --config and the environment; raises ConfigError on bad values.

    A misspelt SYNCWORKER_* variable is warned about on stderr first: the settings would
    otherwise ignore it without a word.
    """
    for warning in unknown_variables(os.environ):
        print(f"syncworker: warning: {warning}", file=sys.stderr)
    return load_settings(args.config, **overrides)
