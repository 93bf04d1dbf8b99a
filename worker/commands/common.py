"""What every subcommand shares: the --config option and settings loading."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from worker.errors import ConfigError
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


def start_tracing(settings: WorkerSettings) -> Callable[[], None] | None:
    """With `tracing` on, set up the OpenTelemetry SDK (`worker.tracing.start_sdk`) unless the
    application set a provider; returns the function that flushes it at exit.

    Raises:
        ConfigError: tracing is on without the otel extra, or an exporter is missing.
    """
    if not settings.tracing:
        return None
    try:
        from worker.tracing import start_sdk

        return start_sdk()
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            "SYNCWORKER_TRACING",
            f"cannot set up OpenTelemetry ({exc}); pip install 'syncworker[otel]'",
        ) from None
