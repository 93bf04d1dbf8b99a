"""Log format choice, masked start-up settings, and the message-bound logger."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

import pytest
import structlog
from structlog.testing import capture_logs

from worker.connection import mask_url
from worker.logs import configure_logging, effective_settings, mask_secrets, use_console
from worker.message import Message
from worker.settings import Route, WorkerSettings


class TestFormat:
    @pytest.mark.parametrize(
        ("fmt", "tty", "console"),
        [
            ("auto", True, True),
            ("auto", False, False),
            ("console", False, True),
            ("json", True, False),
        ],
    )
    def test_console_only_on_a_terminal_or_on_request(
        self, fmt: str, tty: bool, console: bool
    ) -> None:
        """auto follows the terminal; an explicit format wins."""
        assert use_console(fmt, isatty=tty) is console

    def test_json_lines_carry_level_and_timestamp(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """In JSON mode each event is one parseable line with its fields."""
        monkeypatch.setattr("logging.basicConfig", lambda **_: None)  # leave pytest's root alone
        out = io.StringIO()
        try:
            with redirect_stderr(out):
                configure_logging("INFO", "json")
                structlog.get_logger("t").warning("message.retry", stream="s", attempt=2)
                structlog.get_logger("t").debug("hidden")
        finally:
            structlog.reset_defaults()
        (line,) = out.getvalue().splitlines()
        event = json.loads(line)
        assert event["event"] == "message.retry" and event["level"] == "warning"
        assert event["stream"] == "s" and event["attempt"] == 2 and "timestamp" in event


class TestMasking:
    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
            ("redis://:pw@host/0", "redis://:***@host/0"),
            ("rediss://host/0?password=pw&ssl=1", "rediss://host/0?password=***&ssl=1"),
            ("redis://host:6379/0", "redis://host:6379/0"),
        ],
    )
    def test_mask_url(self, url: str, masked: str) -> None:
        """Passwords in the userinfo or the query never reach a log line."""
        assert mask_url(url) == masked

    def test_effective_settings_hide_every_secret(self) -> None:
        """The start-up line shows every setting, with URL, password and secret options masked."""
        settings = WorkerSettings(
            redis_url="redis://app:hunter2@redis:6379/0",
            redis_password="hunter3",
            routes=[
                Route(
                    stream="s",
                    handler="sql",
                    options={"dsn": "postgresql://u:hunter4@db/x", "api_token": "hunter5"},
                )
            ],
        )
        shown = effective_settings(settings)
        text = json.dumps(shown)
        assert "hunter" not in text
        assert shown["redis_url"] == "redis://app:***@redis:6379/0"
        assert shown["group"] == "syncworker" and shown["max_attempts"] == 5
        assert shown["routes"][0]["options"] == {
            "dsn": "postgresql://u:***@db/x",
            "api_token": "***",
        }

    def test_mask_secrets_recurses(self) -> None:
        """Nested option tables are masked too."""
        assert mask_secrets({"db": {"password": "x", "host": "h"}}) == {
            "db": {"password": "***", "host": "h"}
        }


class TestMessageLogger:
    def test_bound_to_the_message_and_its_handler(self) -> None:
        """msg.log carries stream, message_id, handler, attempt and group."""
        msg = Message("orders", "5-1", {b"type": b"t"}, attempt=3, group="billing")
        msg._handler = "sync"
        with capture_logs() as logs:
            msg.log.info("payment.synced", amount=5)
        assert logs == [
            {
                "event": "payment.synced",
                "log_level": "info",
                "stream": "orders",
                "message_id": "5-1",
                "handler": "sync",
                "attempt": 3,
                "group": "billing",
                "amount": 5,
            }
        ]

    def test_rebinds_when_the_next_handler_runs(self) -> None:
        """With several handlers on a stream, each logs under its own name."""
        msg = Message("orders", "5-1", {})
        msg._handler = "first"
        first = msg.log
        assert msg.log is first  # cached while the same handler runs
        msg._handler = "second"
        with capture_logs() as logs:
            msg.log.info("x")
        assert logs[0]["handler"] == "second"
