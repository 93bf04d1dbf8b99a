"""The metrics/health port is closed to everything but Prometheus in Kubernetes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.support import one
from tests.deploy.test_kubernetes import rendered, worker_container


@pytest.fixture(params=["base", "overlay"])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return rendered(request.param)


class TestNetworkPolicy:
    def test_selects_the_worker_pods(self, docs: list[dict[str, Any]]) -> None:
        """The policy applies to the worker pods, as the Deployment labels them."""
        policy = one(docs, "NetworkPolicy")
        pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()

    def test_only_ingress_to_the_metrics_port(self, docs: list[dict[str, Any]]) -> None:
        """Ingress is limited to the metrics port; egress (Redis, databases) is left alone."""
        spec = one(docs, "NetworkPolicy")["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        named = {p["name"] for p in worker_container(docs)["ports"]}
        for rule in spec["ingress"]:
            assert rule["from"], "every rule names who may connect"
            assert {p["port"] for p in rule["ports"]} <= named
