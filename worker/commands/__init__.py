"""Subcommands of `syncworker`, one module each; COMMANDS registers them in help order."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from worker.commands import (
    check,
    consumers,
    demo,
    dlq,
    outbox,
    publish,
    run,
    schema,
    status,
    trim,
)

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

COMMANDS: list[Register] = [
    run.register,
    check.register,
    status.register,
    dlq.register,
    publish.register,
    consumers.register,
    trim.register,
    outbox.register,
    schema.register,
    demo.register,
]
