"""Garbage-collector settings for a process that exists to run a worker.

CPython's cyclic collector makes a young-generation pass every 700 net allocations of
container objects. The hot path allocates several per message (the reply's lists, the
`Message`, and the future and timer handle of a handler that awaits), and under load those
live for the milliseconds a message is in flight: long enough to survive young passes and be
promoted. The promotions then set off full collections, each of which walks the whole
start-up heap (redis-py, pydantic, structlog: tens of thousands of objects that never die).
With 256 handlers awaiting 1 ms each, that was a fifth of the process's time.

Two changes remove it. The start-up heap is frozen (`gc.freeze`), which moves it where the
collector never looks; it lives as long as the process anyway. And the young generation may
grow to `threshold` objects before a pass, so most in-flight messages are gone by the time
one runs. Reference counting still frees at once everything that is not in a cycle, so memory
stays as flat as before: the collector only ever frees cycles, and those now wait a little
longer.
"""

from __future__ import annotations

import gc

DEFAULT_THRESHOLD = 10_000
"""Young-generation threshold; CPython's own is 700."""


def tune_gc(threshold: int = DEFAULT_THRESHOLD) -> None:
    """Freeze the start-up heap and raise the young-generation threshold.

    Call it once, after imports and set-up and before the worker runs; `syncworker run` does.
    It changes the whole process, so a program that embeds `Worker` beside other work
    decides for itself whether to call it.

    Args:
        threshold: allocations between young-generation passes; 0 or less leaves the
            collector exactly as Python configured it.
    """
    if threshold <= 0:
        return
    gc.collect()  # garbage that exists now is freed, not frozen
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
