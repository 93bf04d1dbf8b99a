"""Sentinel through settings: the sentinels, their service, their own credentials and TLS.

The clients are only built here (redis-py connects on the first command); the real
Sentinel set-ups with passwords are in tests/sentinel/test_settings.py.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from worker import ConfigError, load_settings
from worker.connection import connect
from worker.logs import effective_settings, secret_values, secrets_in_environment
from worker.settings import WorkerSettings

SENTINEL_PW = "sentinel-Pw#9"
DATA_PW = "data-Pw@7"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SYNCWORKER_"):
            monkeypatch.delenv(name)


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv("SYNCWORKER_" + key.upper(), value)


class TestSettings:
    def test_the_sentinels_and_service_make_a_sentinel_topology(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _env(monkeypatch, redis_sentinels="s1:26380, s2", redis_sentinel_service="orders-main")
        settings = load_settings()
        assert settings.topology == "sentinel"
        assert settings.masked_url == "redis+sentinel://s1:26380,s2/orders-main/0"

    def test_the_url_still_gives_the_data_nodes_credentials_tls_and_database(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _env(
            monkeypatch,
            redis_url=f"rediss://app:{DATA_PW}@/3",
            redis_sentinels="s1:26379",
            redis_sentinel_service="m",
        )
        settings = load_settings()
        assert settings.masked_url == "rediss+sentinel://app:***@s1:26379/m/3"

    @pytest.mark.parametrize(
        ("values", "variable", "message"),
        [
            ({"redis_sentinels": "s1:26379"}, "SYNCWORKER_REDIS_SENTINEL_SERVICE", "missing"),
            ({"redis_sentinel_service": "m"}, "SYNCWORKER_REDIS_SENTINELS", "missing"),
            (
                {"redis_url": "redis+sentinel://s1/m", "redis_sentinels": "s2",
                 "redis_sentinel_service": "m"},
                "SYNCWORKER_REDIS_SENTINELS", "redis+sentinel:// URL",
            ),
            (
                {"redis_url": "redis://primary:6379/0", "redis_sentinels": "s2",
                 "redis_sentinel_service": "m"},
                "SYNCWORKER_REDIS_URL", "names a host",
            ),
            (
                {"redis_url": "redis+cluster://a:7000", "redis_sentinels": "s2",
                 "redis_sentinel_service": "m"},
                "SYNCWORKER_REDIS_SENTINELS", "redis+cluster:// URL",
            ),
            (
                {"redis_sentinels": "s1:99999", "redis_sentinel_service": "m"},
                "SYNCWORKER_REDIS_SENTINELS", "port must be a number",
            ),
            (
                {"redis_sentinel_password": SENTINEL_PW},
                "SYNCWORKER_REDIS_SENTINEL_PASSWORD", "no sentinels",
            ),
            (
                {"redis_sentinel_username": "u"},
                "SYNCWORKER_REDIS_SENTINEL_USERNAME", "no sentinels",
            ),
            ({"redis_sentinel_tls": "true"}, "SYNCWORKER_REDIS_SENTINEL_TLS", "no sentinels"),
        ],
    )  # fmt: skip
    def test_conflicts_and_halves_are_refused_at_start_up(
        self,
        values: dict[str, str],
        variable: str,
        message: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """One line naming the variable to fix; never the password."""
        _env(monkeypatch, **values)
        with pytest.raises(ConfigError) as caught:
            load_settings()
        assert caught.value.setting == variable
        assert message in str(caught.value)
        assert SENTINEL_PW not in str(caught.value)

    def test_a_file_names_its_key(self, tmp_path: Any) -> None:
        path = tmp_path / "worker.toml"
        path.write_text('redis_sentinels = ["s1:0"]\nredis_sentinel_service = "m"\n')
        with pytest.raises(ConfigError) as caught:
            load_settings(path)
        assert caught.value.setting == f"{path}: redis_sentinels"

    def test_sentinel_credentials_go_with_a_sentinel_url(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _env(
            monkeypatch,
            redis_url="redis+sentinel://s1/m",
            redis_sentinel_password=SENTINEL_PW,
        )
        assert load_settings().topology == "sentinel"


class TestClient:
    async def test_the_sentinels_get_their_own_credentials(self) -> None:
        settings = WorkerSettings(
            redis_password=DATA_PW,
            redis_sentinels=["s1:26380", "s2"],
            redis_sentinel_service="orders-main",
            redis_sentinel_username="watcher",
            redis_sentinel_password=SENTINEL_PW,
        )
        client = connect(settings)
        try:
            pool = client.connection_pool
            assert isinstance(pool, SentinelConnectionPool)
            assert pool.service_name == "orders-main"
            assert pool.connection_kwargs["password"] == DATA_PW
            sentinels = [
                s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels
            ]
            assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26380), ("s2", 26379)]
            assert {(s.get("username"), s.get("password")) for s in sentinels} == {
                ("watcher", SENTINEL_PW)
            }
        finally:
            await client.aclose()

    async def test_without_sentinel_credentials_the_sentinels_get_none(self) -> None:
        """The data nodes' password is not sent to the sentinels (as before)."""
        settings = WorkerSettings(redis_url=f"redis+sentinel://:{DATA_PW}@s1/m")
        client = connect(settings)
        try:
            kwargs = client.connection_pool.sentinel_manager.sentinels[0].connection_pool  # type: ignore[attr-defined]
            assert kwargs.connection_kwargs.get("password") is None
        finally:
            await client.aclose()

    @pytest.mark.parametrize(
        ("url", "sentinel_tls", "data_tls", "sentinels_tls"),
        [
            ("redis+sentinel://s1/m", None, False, False),
            ("rediss+sentinel://s1/m", None, True, True),
            ("rediss+sentinel://s1/m", False, True, False),
            ("redis+sentinel://s1/m", True, False, True),
        ],
    )
    async def test_tls_to_the_sentinels_follows_the_data_nodes_unless_set(
        self,
        url: str,
        sentinel_tls: bool | None,
        data_tls: bool,
        sentinels_tls: bool,
        tmp_path: Any,
    ) -> None:
        """TLS sentinels use the same CA bundle and verification as the data nodes."""
        ca = tmp_path / "ca.pem"
        settings = WorkerSettings(
            redis_url=url, redis_sentinel_tls=sentinel_tls, redis_tls_ca_file=ca
        )
        client = connect(settings)
        try:
            pool = client.connection_pool
            assert ("SSL" in pool.connection_class.__name__) is data_tls
            (sentinel,) = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
            connection_class = sentinel.connection_pool.connection_class
            assert (connection_class.__name__ == "SSLConnection") is sentinels_tls
            if sentinels_tls:
                assert sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)
        finally:
            await client.aclose()


class TestMasking:
    def _settings(self) -> WorkerSettings:
        return WorkerSettings(
            redis_url=f"redis://app:{DATA_PW}@/0",
            redis_sentinels=["s1"],
            redis_sentinel_service="m",
            redis_sentinel_password=SENTINEL_PW,
        )

    def test_the_start_up_line_masks_the_sentinel_password(self) -> None:
        shown = effective_settings(self._settings())
        assert shown["redis_sentinel_password"] == "***"
        assert SENTINEL_PW not in repr(shown) and DATA_PW not in repr(shown)

    def test_the_sentinel_password_is_redacted_wherever_it_shows(self) -> None:
        assert SENTINEL_PW in secret_values(self._settings())
        env = {"SYNCWORKER_REDIS_SENTINEL_PASSWORD": SENTINEL_PW}
        assert SENTINEL_PW in secrets_in_environment(env)

    def test_repr_hides_it(self) -> None:
        assert SENTINEL_PW not in repr(self._settings())
