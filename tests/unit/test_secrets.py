"""Credentials never reach logs, errors or tracebacks, in any form they are written in."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from urllib.parse import quote

import pytest
import structlog

from worker.cli import main
from worker.connection import mask_url
from worker.errors import ConfigError
from worker.logs import configure_logging, mask_secrets
from worker.settings import WorkerSettings, load_settings

SPECIAL = "@:/?#[]!$&'()*+,;=% "
"""Every character with a meaning in a URL, and a space."""
PASSWORD = "Pw" + SPECIAL + "Zq9"


def leaks(text: str, password: str = PASSWORD) -> bool:
    """Whether any 3-character piece of the password's letters shows up in `text`."""
    return any(part in text for part in ("Pw@", "Zq9", password, quote(password, safe="")))


class TestMaskUrl:
    @pytest.mark.parametrize("char", list(SPECIAL))
    def test_raw_special_character(self, char: str) -> None:
        """A password with any URL-special character, written raw, is masked whole."""
        url = f"redis://app:Pw{char}Zq9@redis:6379/0"
        assert mask_url(url) == "redis://app:***@redis:6379/0"

    def test_every_special_character_raw_and_encoded(self) -> None:
        """All of them at once, raw or percent-encoded."""
        for written in (PASSWORD, quote(PASSWORD, safe="")):
            masked = mask_url(f"rediss://app:{written}@redis:6380/1")
            assert masked == "rediss://app:***@redis:6380/1"

    def test_password_without_user(self) -> None:
        """userinfo without a colon may be a bare password: masked whole."""
        assert mask_url("redis://hunter2@redis/0") == "redis://***@redis/0"

    @pytest.mark.parametrize("key", ["password", "sslpassword", "auth_token"])
    def test_query_secrets(self, key: str) -> None:
        """Secret-looking query parameters are masked, whatever the rest of the query."""
        url = f"postgresql://db/x?sslmode=require&{key}=hunter2&connect_timeout=3"
        assert mask_url(url) == f"postgresql://db/x?sslmode=require&{key}=***&connect_timeout=3"


class TestMaskOptions:
    def test_libpq_key_value_dsn(self) -> None:
        """A key=value DSN of the SQL sink hides its password."""
        dsn = "host=db user=app password=s3cret dbname=x"
        assert mask_secrets({"dsn": dsn}) == {"dsn": "host=db user=app password=*** dbname=x"}

    def test_quoted_libpq_password(self) -> None:
        """A quoted value with spaces and escaped quotes is masked whole."""
        dsn = r"host=db password = 'se cr\'et' dbname=x"
        assert mask_secrets({"dsn": dsn}) == {"dsn": "host=db password=*** dbname=x"}

    def test_url_with_every_special_character(self) -> None:
        """A URL option whose password holds every special character is masked whole."""
        masked = mask_secrets({"dsn": f"postgresql://app:{PASSWORD}@db:5432/x"})
        assert masked == {"dsn": "postgresql://app:***@db:5432/x"}


class TestUrlValidation:
    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("redis://host:notaport/0", "port"),
            ("redis://host:99999/0", "port"),
            ("redis://host/notanumber", "database"),
            ("redis://host:6379/0?db=x", "db"),
        ],
    )
    def test_malformed_url_is_a_config_error(self, url: str, says: str) -> None:
        """A malformed URL is refused at start-up with a reason, not at connect time."""
        with pytest.raises(ConfigError) as caught:
            load_settings(redis_url=url)
        assert caught.value.setting == "SYNCWORKER_REDIS_URL"
        assert says in caught.value.message

    @pytest.mark.parametrize("port", ["x#y", "99999", "x/y"])
    def test_error_never_echoes_the_password(self, port: str) -> None:
        """The message names the problem without a piece of the password."""
        with pytest.raises(ConfigError) as caught:
            load_settings(redis_url=f"redis://app:{PASSWORD}@host:{port}/0")
        assert not leaks(str(caught.value))

    def test_raw_special_password_is_accepted(self) -> None:
        """A raw password with #, / or ? is read as the password, not as a path or fragment."""
        settings = WorkerSettings(redis_url=f"redis://app:{PASSWORD}@host:6379/2")  # type: ignore[arg-type]
        assert settings.redis_url.get_secret_value().endswith("@host:6379/2")

    @pytest.mark.parametrize(
        "query", ["ssl_cert_reqs=none", "ssl_cert_reqs=optional", "ssl_check_hostname=false"]
    )
    def test_url_cannot_switch_tls_verification_off(self, query: str) -> None:
        """A URL option that turns verification off contradicts REDIS_TLS_VERIFY=true."""
        with pytest.raises(ConfigError) as caught:
            load_settings(redis_url=f"rediss://host:6380/0?{query}")
        assert caught.value.setting == "SYNCWORKER_REDIS_URL"
        assert "SYNCWORKER_REDIS_TLS_VERIFY" in caught.value.message

    def test_tls_options_without_tls_are_left_alone(self) -> None:
        """On a redis:// URL the ssl options do nothing, so they contradict nothing."""
        settings = load_settings(redis_url="redis://host:6379/0?ssl_cert_reqs=none")
        assert settings.redis_tls_verify

    def test_url_agreeing_with_tls_verify_false_is_fine(self) -> None:
        """With verification off on purpose, the URL may say so too."""
        settings = WorkerSettings(
            redis_url="rediss://host:6380/0?ssl_cert_reqs=none",  # type: ignore[arg-type]
            redis_tls_verify=False,
        )
        assert not settings.redis_tls_verify


class TestCommandLine:
    @pytest.mark.parametrize("command", [["run"], ["check"], ["status", "--stream", "s"]])
    @pytest.mark.parametrize(
        "url",
        [
            f"redis://app:{PASSWORD}@host:notaport/0",
            "redis://host:99999/0",
            "redis://host/notanumber",
            "redis://app:Pw#Zq9@host:6379/x",
        ],
    )
    def test_malformed_url_is_one_line_and_exit_2(
        self, command: list[str], url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every command refuses a malformed URL with one line, exit 2, and no password."""
        monkeypatch.setenv("SYNCWORKER_REDIS_URL", url)
        monkeypatch.setenv("SYNCWORKER_HANDLERS", "tests.integration.plugins:noop")
        err = io.StringIO()
        with redirect_stderr(err):
            code = main(command)
        assert code == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and "SYNCWORKER_REDIS_URL" in lines[0], lines
        assert not leaks(lines[0])


class TestLogRedaction:
    def test_known_secrets_never_reach_a_log_line(self) -> None:
        """A password that slips into an event or a traceback is replaced by ***."""
        out = io.StringIO()
        try:
            with redirect_stderr(out):
                configure_logging("INFO", "json", secrets=[PASSWORD])
                log = structlog.get_logger("t")
                log.warning("oops", detail=f"connect failed for {PASSWORD}")
                try:
                    raise ValueError(f"bad value {quote(PASSWORD, safe='')}")
                except ValueError:
                    log.exception("crashed")
        finally:
            structlog.reset_defaults()
        text = out.getvalue()
        assert not leaks(text)
        events = [json.loads(line) for line in text.splitlines()]
        assert "***" in events[0]["detail"] and "***" in events[1]["exception"]

    def test_passwords_inside_dsn_options_are_known_secrets(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Passwords written inside DSN options or SYNCWORKER_POSTGRES_DSN are redacted too."""
        from worker.logs import secret_values
        from worker.settings import Route

        monkeypatch.setenv("SYNCWORKER_POSTGRES_DSN", "postgresql://app:envPw%23Zq9@db/x")
        settings = WorkerSettings(
            routes=[
                Route(stream="a", handler="sql", options={"dsn": "host=db password='kv Pw@1'"}),
                Route(stream="b", handler="sql", options={"dsn": f"postgresql://u:{PASSWORD}@db"}),
            ]
        )
        found = set(secret_values(settings))
        assert {"kv Pw@1", PASSWORD, "envPw#Zq9"} <= found


class TestUnexpectedErrors:
    def test_traceback_of_a_command_is_redacted(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A command that crashes prints its traceback with the configured passwords blanked."""
        from worker.commands import status as status_command

        monkeypatch.setenv("SYNCWORKER_REDIS_URL", f"redis://app:{PASSWORD}@127.0.0.1:1/0")

        def crash(args: object) -> int:
            raise RuntimeError(f"unexpected reply mentioning {quote(PASSWORD, safe='')}")

        monkeypatch.setattr(status_command, "status", crash)
        code = main(["status", "--stream", "s"])

        err = capsys.readouterr().err
        assert code == 1
        assert "RuntimeError: unexpected reply mentioning ***" in err and "Traceback" in err
        assert not leaks(err)

    def test_stdlib_log_records_are_redacted(self) -> None:
        """Records of libraries that log through `logging` (asyncio, redis-py) are redacted."""
        import logging

        from worker.logs import RedactingFilter, Redactor

        handler = logging.StreamHandler(io.StringIO())
        handler.addFilter(RedactingFilter(Redactor([PASSWORD])))
        logger = logging.getLogger("test.redaction")
        logger.addHandler(handler)
        try:
            try:
                raise ValueError(PASSWORD)
            except ValueError:
                logger.error("task failed for %s", PASSWORD, exc_info=True)
        finally:
            logger.removeHandler(handler)
        text = handler.stream.getvalue()
        assert "task failed for ***" in text and "ValueError: ***" in text
        assert not leaks(text)
