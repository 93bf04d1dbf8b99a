"""The Kubernetes manifests render, validate offline, and agree with the worker's settings."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy import dockerfile
from tests.deploy.support import (
    BASE,
    DEPLOY,
    DOCKERFILE,
    EXTRA_ENV,
    KUBERNETES,
    OVERLAY,
    SCHEMAS,
    by_kind,
    env_list_to_dict,
    example_config,
    kustomize,
    load_yaml,
    one,
    require_module,
)
from worker.runtime.worker import FINAL_FLUSH_S
from worker.settings import ENV_PREFIX, WorkerSettings, load_settings

OLDEST_KUBERNETES = "1.30.0"
"""The oldest Kubernetes version the manifests are validated against (the newest is the latest
schema kubernetes-validate ships)."""

CUSTOM_KINDS = {
    "ScaledObject": "scaledobject.json",
    "ServiceMonitor": "servicemonitor.json",
    "PrometheusRule": "prometheusrule.json",
}

RENDERED: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    """The base or the example overlay, rendered once per session."""
    if name not in RENDERED:
        RENDERED[name] = kustomize(BASE if name == "base" else OVERLAY)
    return RENDERED[name]


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    container: dict[str, Any] = containers[0]
    return container


def settings_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    maps = [m for m in by_kind(docs, "ConfigMap") if m["metadata"]["name"] == "syncworker-settings"]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


@pytest.fixture(params=["base", "overlay"])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return rendered(request.param)


class TestSchemas:
    @pytest.mark.parametrize("which", ["oldest", "latest"])
    def test_builtin_kinds_validate_strictly(self, docs: list[dict[str, Any]], which: str) -> None:
        """Every built-in resource passes the Kubernetes schema, rejecting unknown fields."""
        require_module("kubernetes_validate")
        import kubernetes_validate

        version = OLDEST_KUBERNETES if which == "oldest" else kubernetes_validate.latest_version()

        builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
        assert {d["kind"] for d in builtin} >= {
            "Deployment",
            "Service",
            "ConfigMap",
            "ServiceAccount",
            "PodDisruptionBudget",
        }
        for doc in builtin:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")

    def test_custom_resources_have_their_required_fields(self, docs: list[dict[str, Any]]) -> None:
        """ScaledObject, ServiceMonitor and PrometheusRule have their operators' required fields."""
        require_module("jsonschema")
        import jsonschema

        for kind, schema_file in CUSTOM_KINDS.items():
            schema = json.loads((SCHEMAS / schema_file).read_text())
            doc = one(docs, kind)
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
            assert not errors, f"{kind}: " + "; ".join(e.message for e in errors)

    def test_custom_schema_rejects_a_numeric_trigger_value(self) -> None:
        """The ScaledObject schema catches lagCount written as a number (KEDA wants strings)."""
        require_module("jsonschema")
        import jsonschema

        schema = json.loads((SCHEMAS / "scaledobject.json").read_text())
        doc = json.loads(json.dumps(one(rendered("base"), "ScaledObject")))
        doc["spec"]["triggers"][0]["metadata"]["lagCount"] = 5
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(doc))


class TestDeployment:
    def test_settings_are_ones_the_worker_reads(self, docs: list[dict[str, Any]]) -> None:
        """Every SYNCWORKER_* key of the ConfigMap and env is a real setting with a valid value."""
        container = worker_container(docs)
        data = settings_data(docs)
        env = env_list_to_dict(container.get("env", []))
        names = set(data) | {n for n in env if n.startswith(ENV_PREFIX)}
        fields = {ENV_PREFIX + f.upper() for f in WorkerSettings.model_fields}
        unknown = names - fields - EXTRA_ENV
        assert not unknown, f"settings the worker does not read: {sorted(unknown)}"
        values = {
            k.removeprefix(ENV_PREFIX).lower(): v for k, v in data.items() if k not in EXTRA_ENV
        }
        WorkerSettings(**values, redis_url="redis://redis:6379/0")

    def test_config_map_and_secret_feed_the_container(self, docs: list[dict[str, Any]]) -> None:
        """The settings come from the ConfigMap and the Redis URL from the Secret."""
        container = worker_container(docs)
        assert container["envFrom"] == [{"configMapRef": {"name": "syncworker-settings"}}]
        url = env_list_to_dict(container["env"])["SYNCWORKER_REDIS_URL"]
        ref = url["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("syncworker-redis") and ref["key"] == "url"
        secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
        if docs is rendered("overlay"):
            assert ref["name"] in secrets, "the overlay must provide the Redis Secret"
            assert "url" in secrets[ref["name"]]["data"]

    def test_grace_period_outlasts_the_drain(self, docs: list[dict[str, Any]]) -> None:
        """terminationGracePeriodSeconds exceeds the shutdown timeout plus flush and release."""
        spec = one(docs, "Deployment")["spec"]["template"]["spec"]
        shutdown = float(settings_data(docs)["SYNCWORKER_SHUTDOWN_TIMEOUT"])
        assert spec["terminationGracePeriodSeconds"] > shutdown + 2 * FINAL_FLUSH_S

    def test_probes_use_the_health_endpoints_on_the_metrics_port(
        self, docs: list[dict[str, Any]]
    ) -> None:
        """Liveness and startup ask /healthz, readiness /readyz, on the configured metrics port."""
        container = worker_container(docs)
        port = int(settings_data(docs)["SYNCWORKER_METRICS_PORT"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    def test_runs_as_the_image_user_without_privileges(self, docs: list[dict[str, Any]]) -> None:
        """Pod and container security contexts match the Dockerfile's non-root uid."""
        spec = one(docs, "Deployment")["spec"]["template"]["spec"]
        final = dockerfile.parse(DOCKERFILE)[1][-1]
        uid = int(final.last("USER").arguments.split(":")[0])
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        assert spec["automountServiceAccountToken"] is False
        context = worker_container(docs)["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]

    def test_resources_have_requests_and_limits(self, docs: list[dict[str, Any]]) -> None:
        """CPU and memory both have a request and a limit."""
        resources = worker_container(docs)["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}

    def test_rolling_update_never_drops_capacity(self, docs: list[dict[str, Any]]) -> None:
        """A rollout starts a new pod before it stops an old one."""
        update = one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
        assert update["maxUnavailable"] == 0 and update["maxSurge"] >= 1

    def test_selectors_find_the_worker_pods(self, docs: list[dict[str, Any]]) -> None:
        """Service, PodDisruptionBudget and ServiceMonitor select the worker pods and port."""
        deployment = one(docs, "Deployment")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

        def selects(selector: dict[str, str]) -> bool:
            return all(pod_labels.get(k) == v for k, v in selector.items())

        service = one(docs, "Service")
        assert selects(service["spec"]["selector"])
        assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
        monitor = one(docs, "ServiceMonitor")
        service_labels = service["metadata"]["labels"]
        wanted = monitor["spec"]["selector"]["matchLabels"]
        assert all(service_labels.get(k) == v for k, v in wanted.items())
        assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}


class TestAutoscaling:
    def test_scales_the_deployment_on_the_groups_lag(self, docs: list[dict[str, Any]]) -> None:
        """Each stream has a lag trigger for the worker's group that one message activates."""
        scaled = one(docs, "ScaledObject")
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target == one(docs, "Deployment")["metadata"]["name"]
        group = settings_data(docs)["SYNCWORKER_GROUP"]
        lag = [t["metadata"] for t in scaled["spec"]["triggers"] if "lagCount" in t["metadata"]]
        assert lag, "no lagCount trigger"
        for meta in lag:
            assert meta["consumerGroup"] == group
            # KEDA activates when lag > activationLagCount: 0 lets one entry wake the fleet.
            assert meta["activationLagCount"] == "0"
            assert int(meta["lagCount"]) >= 1

    def test_pending_retries_keep_a_replica_up(self, docs: list[dict[str, Any]]) -> None:
        """Every stream with a lag trigger also has a pending trigger too high to drive scaling."""
        scaled = one(docs, "ScaledObject")
        settings = WorkerSettings(
            **{
                k.removeprefix(ENV_PREFIX).lower(): v
                for k, v in settings_data(docs).items()
                if k not in EXTRA_ENV
            }
        )
        held = 2 * settings.batch_size + settings.concurrency
        triggers = [t["metadata"] for t in scaled["spec"]["triggers"]]
        lag_streams = {m["stream"] for m in triggers if "lagCount" in m}
        pending = {m["stream"]: m for m in triggers if "pendingEntriesCount" in m}
        assert lag_streams == set(pending)
        for meta in pending.values():
            assert int(meta["pendingEntriesCount"]) > held

    def test_trigger_password_comes_from_the_worker_env(self, docs: list[dict[str, Any]]) -> None:
        """KEDA reads the Redis password from an env var the container actually has."""
        env = env_list_to_dict(worker_container(docs)["env"])
        for trigger in one(docs, "ScaledObject")["spec"]["triggers"]:
            name = trigger["metadata"].get("passwordFromEnv")
            assert name is None or name in env

    def test_triggers_cover_the_example_streams_and_group(self) -> None:
        """The ScaledObject watches exactly the streams and the group of the example config."""
        config = example_config()
        if config is None:
            pytest.skip("examples/ is not in this tree yet: stream names not cross-checked")
        settings = load_settings(config)
        routed = {r.stream for r in settings.routes}
        docs = rendered("base")
        triggers = [t["metadata"] for t in one(docs, "ScaledObject")["spec"]["triggers"]]
        assert {m["stream"] for m in triggers} == routed
        assert {m["consumerGroup"] for m in triggers} == {settings.group}
        assert settings_data(docs)["SYNCWORKER_GROUP"] == settings.group


class TestOverlay:
    def test_overlay_sets_namespace_image_and_scale_to_zero(self) -> None:
        """The example puts everything in its namespace, pins the image and idles at zero."""
        docs = rendered("overlay")
        namespace = one(docs, "Namespace")["metadata"]["name"]
        namespaced = [d for d in docs if d["kind"] != "Namespace"]
        assert all(d["metadata"].get("namespace") == namespace for d in namespaced)
        image = worker_container(docs)["image"]
        assert re.fullmatch(r"[\w./-]+/syncworker:[\w.-]+", image), image
        assert one(docs, "ScaledObject")["spec"]["minReplicaCount"] == 0

    def test_prometheus_rule_matches_the_compose_rules(self) -> None:
        """The PrometheusRule carries exactly the groups the compose Prometheus loads."""
        rule = load_yaml(BASE / "prometheusrule.yaml")
        assert rule["spec"] == load_yaml(DEPLOY / "prometheus" / "alerts.yml")

    def test_deployment_leaves_the_replica_count_to_the_autoscaler(self) -> None:
        """No replicas field, so `kubectl apply` does not fight KEDA's HPA over the count."""
        for name in ("base", "overlay"):
            assert "replicas" not in one(rendered(name), "Deployment")["spec"]


class TestOrderedOverlay:
    """The ordered overlay scales on every partition's lag, never above the partition count."""

    def test_triggers_cover_every_partition_and_replicas_stay_within_them(self) -> None:
        from worker.partitions import partition_names
        from worker.registry import handlers_from_settings

        docs = kustomize(KUBERNETES / "overlays" / "ordered")
        data = settings_data(docs)
        settings = WorkerSettings(
            routes=json.loads(data["SYNCWORKER_ROUTES"]), group=data["SYNCWORKER_GROUP"]
        )
        ordered = [h for h in handlers_from_settings(settings) if h.ordered]
        assert ordered, "the overlay routes no ordered stream"
        scaled = one(docs, "ScaledObject")
        triggers = [t["metadata"] for t in scaled["spec"]["triggers"]]
        for h in ordered:
            for logical in h.logical_streams:
                wanted = set(partition_names(logical, h.partitions))
                assert {m["stream"] for m in triggers if "lagCount" in m} >= wanted
                assert {m["stream"] for m in triggers if "pendingEntriesCount" in m} >= wanted
        assert {m["consumerGroup"] for m in triggers} == {settings.group}
        # a replica beyond the partition count would hold no lease and read nothing
        assert scaled["spec"]["maxReplicaCount"] <= min(h.partitions for h in ordered)
