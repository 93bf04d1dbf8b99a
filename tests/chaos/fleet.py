"""The worker fleet of a chaos run: `syncworker run` subprocesses, each behind its own proxy.

Each slot is one "pod": a worker process that reaches Redis through its own TCP proxy, so a
cut or a stall hits one worker while the others go on. A slot's process can be killed or
terminated and started again, under its old consumer name (as a StatefulSet pod comes back)
or a new one (as a Deployment's pod does). Every process is stopped by its pid only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.handlers.tcp_proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]
TERM_PATIENCE = 15.0
"""Seconds a terminated worker gets to exit before it is killed (shutdown_timeout + margin)."""


@dataclass
class Life:
    """One process of a slot, from start to exit."""

    consumer: str
    pid: int
    started_ns: int
    ended_ns: int | None = None
    hwm_kb: int = 0
    end: str = ""
    """How it ended: sigkill, sigterm, final (the end of the run)."""
    exit_code: int | None = None
    pending_at_signal: list[str] = field(default_factory=list)
    ended_wall: float = 0.0
    """The exit as wall-clock time, to compare with the timestamps of the worker logs."""


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a live process, in kB (0 when it is already gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Slot:
    """One worker "pod": its proxy, its current process and the processes it had."""

    def __init__(self, index: int, proxy: Proxy, env: dict[str, str], log_dir: Path):
        self.index = index
        self.proxy = proxy
        self.env = env
        self.log_dir = log_dir
        self.lives: list[Life] = []
        self.process: asyncio.subprocess.Process | None = None
        self.busy = False
        """True while a fault or a restart is working on this slot."""
        self.stalled = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def life(self) -> Life:
        return self.lives[-1]

    async def start(self, consumer: str) -> None:
        env = {**self.env, "SYNCWORKER_CONSUMER": consumer}
        env["SYNCWORKER_REDIS_URL"] = f"redis://127.0.0.1:{self.proxy.port}/0"
        log_path = self.log_dir / f"{consumer}.{len(self.lives)}.log"
        with open(log_path, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "run", env=env, stdout=log, stderr=log
            )
        self.lives.append(Life(consumer, self.process.pid, time.monotonic_ns()))

    async def stop(self, sig: signal.Signals, end: str, pending: list[str] | None = None) -> Life:
        """Signal the current process (after reading its peak RSS) and wait until it exits."""
        process, life = self.process, self.life
        assert process is not None
        life.hwm_kb = peak_rss_kb(process.pid)
        life.pending_at_signal = pending or []
        life.end = end
        if process.returncode is None:
            process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), TERM_PATIENCE)
        except TimeoutError:
            life.end += " (killed: did not exit)"
            process.kill()
            await process.wait()
        life.ended_ns = time.monotonic_ns()
        life.ended_wall = time.time()
        life.exit_code = process.returncode
        return life

    async def reap(self) -> None:
        """Kill the current process, if any is left (the end of a failed run)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
            self.life.ended_ns = self.life.ended_ns or time.monotonic_ns()


def worker_env(stream: str, group: str, run_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment of every chaos worker: settings as SYNCWORKER_* variables."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CHAOS_RUN_DIR": str(run_dir),
        "SYNCWORKER_GROUP": group,
        "SYNCWORKER_ROUTES": (
            f'[{{"stream": "{stream}", "handler": "tests.chaos.plugin:ChaosProjection"}}]'
        ),
        "SYNCWORKER_METRICS_PORT": "0",
        "SYNCWORKER_LOG_FORMAT": "json",
    }
    for key, value in settings.items():
        env[f"SYNCWORKER_{key.upper()}"] = str(value)
    return env


@contextlib.asynccontextmanager
async def proxies(count: int, target_port: int) -> Any:
    """`count` started proxies to `target_port`, stopped on exit."""
    started = [Proxy(target_port) for _ in range(count)]
    for proxy in started:
        await proxy.start()
    try:
        yield started
    finally:
        for proxy in started:
            await proxy.stop()
