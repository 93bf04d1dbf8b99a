"""The event loop a worker runs on: uvloop when installed, unless told otherwise.

uvloop runs the same code with timers, sockets and task switches in C, and its timers fire
closer to their deadline than asyncio's, whose waits round up to whole milliseconds. With
handlers that await I/O that is worth a third to a half more throughput (docs/performance.md),
so it is a dependency wherever it exists (Linux and macOS, on CPython). It stays switchable
(SYNCWORKER_EVENT_LOOP), since some environments or libraries insist on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from worker.errors import ConfigError

T = TypeVar("T")

LoopChoice = Literal["auto", "asyncio", "uvloop"]
"""`auto`: uvloop if importable, else asyncio; the others force one."""


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner`; None means asyncio's default loop.

    Raises:
        ConfigError: `uvloop` was asked for but is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "SYNCWORKER_EVENT_LOOP",
                "uvloop is not installed (it does not exist for Windows or PyPy): "
                "pip install uvloop, or use auto or asyncio",
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_in_loop(main: Coroutine[Any, Any, T], choice: LoopChoice = "auto") -> T:
    """Run `main` to completion on the chosen event loop, like `asyncio.run`."""
    try:
        factory = loop_factory(choice)
    except BaseException:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
