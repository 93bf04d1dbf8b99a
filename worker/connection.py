"""Redis clients built from settings, and URL masking for logs."""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis

from worker.settings import WorkerSettings

_CREDENTIALS = re.compile(r"^(?P<scheme>[a-z]+://)(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with its password (userinfo or `?password=`) replaced by `***`, safe to log."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    match = _CREDENTIALS.match(url)
    if not match or match.group("password") is None:
        return url
    return f"{match['scheme']}{match['user']}:***@{url[match.end() :]}"


def connect(settings: WorkerSettings, *, blocking_reads: bool = False) -> Redis:
    """A client for `settings.redis_url` that returns bytes.

    Args:
        blocking_reads: allow for XREADGROUP BLOCK in the socket timeout, so that a read
            that waits for data is not mistaken for a dead connection.
    """
    timeout = settings.redis_timeout + (settings.block if blocking_reads else 0.0)
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "health_check_interval": 30,
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    url = settings.redis_url.get_secret_value()
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required" if settings.redis_tls_verify else "none"
        if not settings.redis_tls_verify:
            options["ssl_check_hostname"] = False
        if settings.redis_tls_ca_file:
            options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
        if settings.redis_tls_cert_file:
            options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        if settings.redis_tls_key_file:
            options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return Redis.from_url(url, **options)
