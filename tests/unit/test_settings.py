"""Settings from the environment and TOML, and the errors bad values produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SYNCWORKER_"):
            monkeypatch.delenv(name)


class TestEnvironment:
    def test_issue_settings_are_read_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every documented SYNCWORKER_* variable lands in its field, fractions included."""
        env = {
            "REDIS_URL": "redis://u:p@h:1/2",
            "GROUP": "g",
            "CONSUMER": "c",
            "HANDLERS": "a, pkg.mod:h ,",
            "CONCURRENCY": "4",
            "BATCH_SIZE": "10",
            "MAX_ATTEMPTS": "3",
            "RETRY_BASE": "0.05",
            "RETRY_MAX": "2.5",
            "CLAIM_IDLE": "7.5",
            "SHUTDOWN_TIMEOUT": "0.5",
        }
        for key, value in env.items():
            monkeypatch.setenv(f"SYNCWORKER_{key}", value)
        s = load_settings()
        assert s.redis_url.get_secret_value() == "redis://u:p@h:1/2"
        assert (s.group, s.consumer, s.handlers) == ("g", "c", ["a", "pkg.mod:h"])
        assert (s.concurrency, s.batch_size, s.max_attempts) == (4, 10, 3)
        assert (s.retry_base, s.retry_max, s.claim_idle, s.shutdown_timeout) == (
            0.05,
            2.5,
            7.5,
            0.5,
        )
        assert "p@" not in repr(s)

    def test_default_consumer_is_unique_per_process(self) -> None:
        """The default consumer name is hostname-pid."""
        import os
        import socket

        assert load_settings().consumer == f"{socket.gethostname()}-{os.getpid()}"

    @pytest.mark.parametrize(
        ("concurrency", "expected"), [(1, 256), (16, 256), (64, 256), (256, 1024), (5000, 10_000)]
    )
    def test_unset_batch_size_reads_several_entries_per_lane(
        self, monkeypatch: pytest.MonkeyPatch, concurrency: int, expected: int
    ) -> None:
        """Without a batch size, a read holds 4 entries per lane: 256 at least, 10,000 at most."""
        monkeypatch.setenv("SYNCWORKER_CONCURRENCY", str(concurrency))
        assert load_settings().batch_size == expected
        monkeypatch.setenv("SYNCWORKER_BATCH_SIZE", "0")
        assert load_settings().batch_size == expected

    def test_a_set_batch_size_is_kept_at_any_concurrency(self) -> None:
        assert load_settings(concurrency=256, batch_size=100).batch_size == 100


class TestTomlFile:
    def test_file_values_and_routes_with_env_overriding(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A TOML file sets values and routes; an environment variable beats the file."""
        path = tmp_path / "w.toml"
        path.write_text(
            'group = "from-file"\nconcurrency = 3\n'
            '[[routes]]\nstream = "orders"\nhandler = "projection"\n'
            'types = ["order.paid"]\noptions = { prefix = "pay:" }\n'
        )
        monkeypatch.setenv("SYNCWORKER_CONCURRENCY", "9")
        s = load_settings(path)
        assert s.group == "from-file" and s.concurrency == 9
        [route] = s.routes
        assert (route.stream, route.handler, route.types) == (
            "orders",
            "projection",
            ["order.paid"],
        )
        assert route.options == {"prefix": "pay:"}

    def test_unknown_key_in_file_is_refused(self, tmp_path: Path) -> None:
        """A typo in the file is an error naming the key, not silently ignored."""
        path = tmp_path / "w.toml"
        path.write_text("concurency = 3\n")
        with pytest.raises(ConfigError, match=r"w\.toml: concurency"):
            load_settings(path)


class TestValidation:
    @pytest.mark.parametrize(
        ("overrides", "setting"),
        [
            ({"redis_url": "http://x"}, "SYNCWORKER_REDIS_URL"),
            ({"concurrency": 0}, "SYNCWORKER_CONCURRENCY"),
            ({"retry_base": 5, "retry_max": 1}, "retry_base"),
            ({"claim_interval": 10, "claim_idle": 1}, "claim_interval"),
            ({"log_level": "LOUD"}, "SYNCWORKER_LOG_LEVEL"),
        ],
    )
    def test_bad_values_name_their_setting(
        self, overrides: dict[str, object], setting: str
    ) -> None:
        """Each invalid value raises ConfigError mentioning the setting."""
        with pytest.raises(ConfigError, match=setting):
            load_settings(**overrides)
