"""Subcommands of `syncworker`, one module each; COMMANDS registers them in help order."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from worker.commands import check, demo, run

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

COMMANDS: list[Register] = [run.register, check.register, demo.register]
