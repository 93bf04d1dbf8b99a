"""What the throwaway servers (`RedisServer`, `Sentinel`) and the set-ups built from them share:
a with-block that starts and cleans up, and one child process started, polled until it
answers, and stopped by its own pid, never by name."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self


class Managed:
    """`start()` on entering a with-block, `cleanup()` on leaving it, even on an error."""

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class ChildProcess(Managed):
    """One child process that this object alone starts and stops."""

    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the running process, or None."""
        return None if self.process is None else self.process.pid

    def _spawn(self, args: Sequence[str], answers: Callable[[], bool], timeout: float) -> None:
        """Start `args` and poll `answers` until it is true.

        Raises:
            RuntimeError: the process exited, or did not answer within `timeout` seconds (it
                is stopped then).
        """
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {self.process.returncode}")
            if answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{args[0]} did not answer in {timeout}s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` and wait for the exit; SIGKILL after 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
