"""`syncworker run`: the worker process."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import structlog

from worker.commands.common import add_config_option, settings_from, start_tracing
from worker.errors import ConfigError, StartupError
from worker.gc_tuning import tune_gc
from worker.logs import configure_logging, secret_values
from worker.loop import run_in_loop
from worker.registry import handlers_from_settings
from worker.runtime.worker import Worker

EXAMPLE = """example:
  SYNCWORKER_REDIS_URL=redis://localhost:6379/0 SYNCWORKER_HANDLERS=myapp.handlers:sync_payment \\
    syncworker run
  syncworker run --config worker.toml
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="consume the routed streams until SIGTERM",
        description="Read the routed streams through the consumer group and run the handlers. "
        "SIGTERM or SIGINT drains gracefully; a second signal exits at once.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format, secrets=secret_values(settings))
    handlers = handlers_from_settings(settings)
    worker = Worker(settings, handlers)
    stop_tracing = start_tracing(settings)
    tune_gc(settings.gc_threshold)  # last, so that everything set up so far is frozen
    try:
        code = run_in_loop(_serve(worker), settings.event_loop)
    finally:
        if stop_tracing is not None:
            stop_tracing()  # exports the spans still buffered
    if worker.threads.abandoned:
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit without interpreter finalisation, which would run beside the abandoned handler
    threads (daemon threads: they are frozen or crash when they next touch the interpreter,
    and one holding a lock, of stdout say, can hang the exit). The worker has drained: acks
    are flushed and Redis connections closed; only the abandoned entries stay pending."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _serve(worker: Worker) -> int:
    worker.install_signal_handlers()
    try:
        await worker.run()
    except ConfigError:
        raise  # e.g. the metrics port is taken: one line and exit code 2
    except StartupError:
        return 1  # already logged as worker.start_failed, in one line
    except Exception:
        structlog.get_logger("worker").exception("worker.crashed")
        return 1
    return 0
