"""Sentinel tests kill a primary mid-run. redis-py's Sentinel pool then drops its connections
to the dead primary without closing them, and their sockets are reported as ResourceWarnings
whenever the garbage collector finds them, in whichever test runs then. Collect them here,
at the end of the test that made them, with that one warning ignored."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_dropped_connections() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
