"""`python -m worker.ops.healthcheck`: the container image's HEALTHCHECK, without curl.

Slim images carry no curl or wget, and a shell one-liner would have to guess the port. This
reads the same settings as `syncworker run` (SYNCWORKER_* variables and SYNCWORKER_CONFIG),
asks the worker's own `/healthz`, and exits 0 when it answers 200, 1 otherwise, as Docker's
HEALTHCHECK expects.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from worker.errors import ConfigError
from worker.settings import load_settings

TIMEOUT_S = 3.0
"""Seconds to wait for /healthz; Docker's own --timeout should be a little longer."""

_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def health_url(host: str, port: int) -> str:
    """The /healthz URL of a server bound to `host`:`port`, reached from inside the container."""
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def probe(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """GET `url`; healthy only on HTTP 200. Returns (healthy, one-line reason)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except OSError as exc:
        return False, f"{url} unreachable: {exc}"
    return status == 200, f"{url} answered {status}"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the worker's /healthz answers 200 (or the server is disabled), else 1."""
    del argv
    try:
        settings = load_settings(os.environ.get("SYNCWORKER_CONFIG"))
    except ConfigError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if settings.metrics_port == 0:
        print("healthy: metrics server disabled (SYNCWORKER_METRICS_PORT=0); nothing to ask")
        return 0
    healthy, reason = probe(health_url(settings.metrics_host, settings.metrics_port))
    print(("healthy: " if healthy else "unhealthy: ") + reason, file=sys.stdout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
