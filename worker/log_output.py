"""Where log records are written: stderr, without ever raising or blocking the event loop.

Logging is a side effect; it must not stop the worker. A plain write to stderr can do both:
with the reader of a stderr pipe gone (`syncworker run 2>&1 | head -1`, a log shipper that
died) it raises BrokenPipeError into whatever code logged, and with a pipe that nobody reads
(full at 64 KiB) it blocks the event loop, and with it every ack, until someone reads.

`LogOutput` is the file object structlog and stdlib logging write through. Each `write` call
is one record. It writes straight to the file descriptor and only as much as fits right now:
it asks `select` whether the descriptor has room, and writes at most `PIPE_BUF` bytes at a
time, which a pipe with room takes whole without waiting. What does not fit waits in a small
queue (`MAX_PENDING_BYTES`) and goes out before the next record; a record that does not fit in
the queue either is dropped. A write that fails (EPIPE, EBADF, EIO) drops the queued records.
Records are only ever dropped whole, so no line is torn, and the first record written after a
loss is preceded by a `log.records_dropped` line giving the count. Queued records go out with
the next record, or at exit, where the process waits a bounded time for room (`drain`); there
is no timer that flushes them in between, so after a stall the last few lines before a quiet
spell may appear late.

Why not O_NONBLOCK on stderr: the flag belongs to the open file description, which a worker
usually shares (with the shell and its terminal, or with every process writing to the same
pipe), so it would change how they write too. Asking `select` first needs no flag.

Records dropped are counted in this module (`dropped_records()`), not in the worker's
`Stats`: logging is configured, and can fail, before any Worker exists, and one process has one
stderr whatever number of workers it runs. The metrics collector reads the count from here as
`syncworker_log_records_dropped_total`.
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TextIO

MAX_PENDING_BYTES = 64 * 1024
"""Bytes of records kept while the output has no room; beyond this, new records are dropped.
As much again as a pipe holds by default on Linux: enough for a burst while a slow reader
catches up, and a bound on the memory of a reader that never does."""

CHUNK = getattr(select, "PIPE_BUF", 512)
"""Largest single write: a pipe with room takes a write this size whole, without waiting."""

_dropped = 0
_dropped_lock = threading.Lock()


def dropped_records() -> int:
    """Log records dropped by this process because the output failed or had no room."""
    return _dropped


def _count_dropped(n: int) -> None:
    global _dropped
    with _dropped_lock:
        _dropped += n


class LogOutput:
    """A text sink for log records that never raises and never waits for room.

    Args:
        stream: where records go, usually `sys.stderr`. Its file descriptor is written
            directly; a stream without one (a StringIO in tests) is written as a stream,
            with errors dropped but no protection against blocking. None drops everything
            (Python sets `sys.stderr` to None when started with stderr closed).
        json_lines: write the dropped-records notice as a JSON line (else as console text).
        max_pending: bytes of records kept while the output has no room.
    """

    def __init__(
        self,
        stream: TextIO | None,
        *,
        json_lines: bool = True,
        max_pending: int = MAX_PENDING_BYTES,
    ) -> None:
        self.stream = stream
        self.fd = _fileno(stream)
        self.json_lines = json_lines
        self.max_pending = max_pending
        self.unreported = 0
        """Records dropped since the last notice in the output."""
        self._pending: deque[tuple[bytes, int]] = deque()
        """Records (data, 0) and drop notices (data, records reported) waiting for room."""
        self._pending_bytes = 0
        self._offset = 0  # bytes of the first pending record already written
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        """Write one record (or queue it, or drop it); never raises, never waits for room."""
        with self._lock:
            if self.fd is None:
                self._write_stream(text)
            else:
                self._flush_pending()
                self._queue(text.encode("utf-8", "backslashreplace"))
                self._flush_pending()
        return len(text)

    def flush(self) -> None:
        """Write what is queued, as far as it fits now."""
        with self._lock:
            if self.fd is not None:
                self._flush_pending()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to go out (at exit); True if it did.

        What is still queued after that is dropped and counted.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.unreported and self.fd is not None:  # say so even if nothing follows
                self._queue_notice()
            while self._pending and self.fd is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _writable(self.fd, remaining):
                    self._drop_pending()
                    return False
                self._flush_pending()
            return True

    def record_dropped(self) -> None:
        """Count one record lost (also one that failed before it reached `write`)."""
        _count_dropped(1)
        with self._lock:
            self.unreported += 1

    def _queue(self, data: bytes) -> None:
        notice = self._notice(self.unreported) if self.unreported else b""
        if self._pending_bytes + len(notice) + len(data) > self.max_pending:
            self.record_dropped()
            return
        if notice:  # where the gap is: before the first record that follows it
            self._queue_notice(notice)
        self._pending.append((data, 0))
        self._pending_bytes += len(data)

    def _queue_notice(self, notice: bytes | None = None) -> None:
        notice = notice or self._notice(self.unreported)
        self._pending.append((notice, self.unreported))
        self._pending_bytes += len(notice)
        self.unreported = 0

    def _flush_pending(self) -> None:
        assert self.fd is not None
        while self._pending:
            if not _writable(self.fd, 0):
                return
            head = self._pending[0][0]
            try:
                written = os.write(self.fd, head[self._offset : self._offset + CHUNK])
            except BlockingIOError:  # someone else made the descriptor non-blocking
                return
            except OSError:  # EPIPE, EBADF, EIO: nothing queued can go out
                self._drop_pending()
                return
            self._offset += written
            if self._offset >= len(head):
                self._pending.popleft()
                self._pending_bytes -= len(head)
                self._offset = 0

    def _drop_pending(self) -> None:
        for _, reported in self._pending:
            if reported:  # a notice: its records are unreported again
                self.unreported += reported
            else:
                self.record_dropped()
        self._pending.clear()
        self._pending_bytes = 0
        self._offset = 0

    def _write_stream(self, text: str) -> None:
        if self.stream is None:
            self.record_dropped()
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.record_dropped()

    def _notice(self, count: int) -> bytes:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        total = dropped_records()
        if self.json_lines:
            line = json.dumps(
                {
                    "event": "log.records_dropped",
                    "count": count,
                    "total": total,
                    "level": "warning",
                    "timestamp": now,
                }
            )
        else:
            line = f"{now} [warning  ] log.records_dropped count={count} total={total}"
        return (line + "\n").encode()


class LogOutputHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib logging handler writing through a `LogOutput`.

    `StreamHandler.handleError` prints a traceback to `sys.stderr`: the very stream that may
    be broken or full. Here a record that fails (it cannot be formatted) is counted as dropped
    instead, so stdlib logging never raises, loops or blocks on the output either.
    """

    def __init__(self, output: LogOutput) -> None:
        super().__init__(output)
        self.output = output

    def handleError(self, record: logging.LogRecord) -> None:
        self.output.record_dropped()


def _fileno(stream: TextIO | None) -> int | None:
    if stream is None:
        return None
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None


def _writable(fd: int, timeout: float) -> bool:
    """Whether `fd` has room for a write now (or within `timeout` seconds).

    An error condition (a pipe without reader, a closed descriptor) counts as writable: the
    write that follows reports it.
    """
    try:
        _, ready, failed = select.select([], [fd], [fd], timeout)
    except (OSError, ValueError):
        return True
    return bool(ready or failed)
