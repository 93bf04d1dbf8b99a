"""`python -m worker.ops.healthcheck`, the image's HEALTHCHECK, maps /healthz to exit codes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.ops import healthcheck
from worker.redis_server import free_port


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"stuck")

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    """A stand-in for the worker's metrics server on a free local port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _port(httpd: ThreadingHTTPServer) -> int:
    return int(httpd.server_address[1])


class TestHealthcheck:
    @pytest.mark.parametrize(
        ("host", "url"),
        [
            ("0.0.0.0", "http://127.0.0.1:9100/healthz"),
            ("::", "http://127.0.0.1:9100/healthz"),
            ("10.1.2.3", "http://10.1.2.3:9100/healthz"),
            ("fd00::1", "http://[fd00::1]:9100/healthz"),
        ],
    )
    def test_url_targets_the_bound_address(self, host: str, url: str) -> None:
        """A wildcard bind is asked on loopback; a specific address is asked directly."""
        assert healthcheck.health_url(host, 9100) == url

    def test_healthy_worker_exits_zero(
        self, server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """/healthz answering 200 gives exit code 0."""
        monkeypatch.setattr(_Health, "status", 200)
        monkeypatch.setenv("SYNCWORKER_METRICS_PORT", str(_port(server)))
        monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
        assert healthcheck.main() == 0

    def test_stuck_worker_exits_one(
        self, server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """/healthz answering 503 gives exit code 1."""
        monkeypatch.setattr(_Health, "status", 503)
        monkeypatch.setenv("SYNCWORKER_METRICS_PORT", str(_port(server)))
        monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
        assert healthcheck.main() == 1

    def test_nothing_listening_exits_one(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A worker whose server is not up (yet, or any more) is unhealthy."""
        monkeypatch.setenv("SYNCWORKER_METRICS_PORT", str(free_port()))
        monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
        assert healthcheck.main() == 1

    def test_disabled_server_counts_as_healthy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the metrics server turned off there is nothing to ask: exit 0."""
        monkeypatch.setenv("SYNCWORKER_METRICS_PORT", "0")
        monkeypatch.delenv("SYNCWORKER_CONFIG", raising=False)
        assert healthcheck.main() == 0

    def test_port_from_the_config_file(
        self, server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """The port set in the SYNCWORKER_CONFIG file is the one asked."""
        config = tmp_path / "worker.toml"
        config.write_text(f"metrics_port = {_port(server)}\n")
        monkeypatch.setattr(_Health, "status", 200)
        monkeypatch.delenv("SYNCWORKER_METRICS_PORT", raising=False)
        monkeypatch.setenv("SYNCWORKER_CONFIG", str(config))
        assert healthcheck.main() == 0
