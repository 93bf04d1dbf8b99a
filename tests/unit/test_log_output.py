"""LogOutput: records to a broken, closed or full stderr are dropped and counted, never raised
and never waited for; stdlib logging through it cannot raise, loop or block either."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from worker import log_output
from worker.log_output import CHUNK, LogOutput, LogOutputHandler, dropped_records


class Pipe:
    """A pipe whose ends are closed once, and a text stream on its write end."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.open = {self.r, self.w}
        self.stream = open(self.w, "w", closefd=False)  # noqa: SIM115 - closed in close_all

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        self.stream.close()
        for fd in list(self.open):
            self.close(fd)

    def fill(self) -> None:
        os.set_blocking(self.w, False)
        try:
            while True:
                os.write(self.w, b"filler\n")
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self.w, True)

    def read(self) -> bytes:
        os.set_blocking(self.r, False)
        out = bytearray()
        try:
            while chunk := os.read(self.r, 65536):
                out += chunk
        except BlockingIOError:
            pass
        return bytes(out)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close_all()


def records(n: int, size: int) -> list[str]:
    """`n` JSON lines of about `size` bytes each, numbered."""
    return [json.dumps({"n": i, "pad": "x" * size}) + "\n" for i in range(n)]


class TestBrokenOutput:
    def test_a_pipe_without_reader_drops_and_counts(self, pipe: Pipe) -> None:
        """EPIPE: every record is dropped and counted; write never raises."""
        out = LogOutput(pipe.stream)
        pipe.close(pipe.r)
        before = dropped_records()
        for line in records(3, 10):
            assert out.write(line) == len(line)
        assert dropped_records() - before == 3

    def test_a_closed_descriptor_drops_and_counts(self, pipe: Pipe) -> None:
        """EBADF (stderr closed under the process) is dropped and counted, not raised."""
        out = LogOutput(pipe.stream)
        pipe.close(pipe.w)
        before = dropped_records()
        out.write("lost\n")
        assert dropped_records() - before == 1

    def test_no_stderr_at_all_drops_and_counts(self) -> None:
        """Started with stderr closed (sys.stderr is None): records are counted, not written."""
        before = dropped_records()
        LogOutput(None).write("lost\n")
        assert dropped_records() - before == 1

    def test_a_stream_without_descriptor_is_written_and_its_errors_dropped(self) -> None:
        """A StringIO (tests) is written as a stream; once closed, records are dropped."""
        stream = io.StringIO()
        out = LogOutput(stream)
        out.write("kept\n")
        assert stream.getvalue() == "kept\n"
        stream.close()
        before = dropped_records()
        out.write("lost\n")
        assert dropped_records() - before == 1


class TestFullOutput:
    def test_a_full_pipe_never_blocks_and_tears_no_line(self, pipe: Pipe) -> None:
        """With the pipe full, records (larger than PIPE_BUF too) are queued up to the bound,
        then dropped whole; once there is room they follow a count of what was lost."""
        pipe.fill()
        out = LogOutput(pipe.stream, max_pending=4 * CHUNK)
        before = dropped_records()
        # When: records go to a pipe that nobody reads (a blocking write would hang here)
        lines = records(20, CHUNK + 100)
        for line in lines:
            out.write(line)
        lost = dropped_records() - before
        assert lost == 17  # three of about 4.2 KB fit in 16 KB
        # Then: once the pipe is read, the queue, a notice and the next record go out
        pipe.read()
        out.write(lines[-1])
        written = [json.loads(line) for line in pipe.read().splitlines()]
        assert [w["n"] for w in written[:3]] == [0, 1, 2]
        assert written[3]["event"] == "log.records_dropped" and written[3]["count"] == lost
        assert written[4]["n"] == 19 and len(written) == 5

    def test_drain_waits_a_bounded_time_then_drops(self, pipe: Pipe) -> None:
        """At exit, queued records wait at most the timeout for room, then count as dropped."""
        pipe.fill()
        out = LogOutput(pipe.stream)
        out.write("queued\n")
        before = dropped_records()
        assert out.drain(0.05) is False
        assert dropped_records() - before == 1

    def test_drain_writes_the_queue_and_a_final_notice(self, pipe: Pipe) -> None:
        """With room again, drain writes what is queued and says how much was lost."""
        pipe.fill()
        out = LogOutput(pipe.stream, max_pending=100)
        out.write("a" * 60 + "\n")
        out.write("b" * 60 + "\n")  # does not fit the queue
        pipe.read()
        assert out.drain(1.0) is True
        first, notice = pipe.read().splitlines()
        assert first == b"a" * 60
        assert json.loads(notice)["count"] == 1


class TestStdlibLogging:
    @pytest.fixture
    def logger(self, pipe: Pipe) -> Iterator[tuple[logging.Logger, LogOutputHandler]]:
        out = LogOutput(pipe.stream)
        handler = LogOutputHandler(out)
        logger = logging.getLogger(f"test.log_output.{id(pipe)}")
        logger.propagate = False
        logger.addHandler(handler)
        yield logger, handler
        logger.removeHandler(handler)

    def test_a_broken_pipe_neither_raises_nor_reaches_sys_stderr(
        self,
        pipe: Pipe,
        logger: tuple[logging.Logger, LogOutputHandler],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """logging.error to a pipe without reader is dropped and counted; handleError does
        not print a traceback to sys.stderr (which may be the same broken pipe)."""
        log, _ = logger
        pipe.close(pipe.r)
        before = dropped_records()
        log.error("lost %s", "record")
        assert dropped_records() - before == 1
        assert capsys.readouterr().err == ""

    def test_a_record_that_cannot_be_formatted_is_counted(
        self, logger: tuple[logging.Logger, LogOutputHandler], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A formatting error is counted as a dropped record, not printed to sys.stderr."""
        log, handler = logger
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "%d", ("nan",), None)
        before = dropped_records()
        handler.handle(record)  # only this handler: pytest's own would re-raise the error
        assert dropped_records() - before == 1
        assert capsys.readouterr().err == ""


def test_the_count_is_process_wide(monkeypatch: Any) -> None:
    """The counter lives in the module: it exists before any Worker and is shared by all."""
    monkeypatch.setattr(log_output, "_dropped", 0)
    LogOutput(None).write("x\n")
    LogOutput(None).write("y\n")
    assert dropped_records() == 2
