"""deploy/compose.yaml is a valid Compose file whose services use settings the worker reads."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import re
from importlib import resources
from typing import Any

import pytest

from tests.deploy.support import (
    CLI_ENV,
    COMPOSE,
    DEPLOY,
    EXTRA_ENV,
    HANDLER_ENV,
    ROOT,
    example_config,
    load_yaml,
    require_module,
)
from worker.cli import build_parser
from worker.commands import common
from worker.runtime.worker import FINAL_FLUSH_S
from worker.settings import ENV_PREFIX, WorkerSettings

SERVICES = {"redis", "postgres", "worker", "publisher", "prometheus", "grafana"}
WORKER_IMAGE_SERVICES = ("worker", "publisher")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


class TestCompose:
    def test_validates_against_the_compose_specification(self, compose: dict[str, Any]) -> None:
        """The file passes the Compose Specification's JSON schema."""
        require_module("check_jsonschema")
        require_module("jsonschema")
        import jsonschema

        vendored = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
        schema_file = vendored / "compose-spec.json"
        schema = json.loads(schema_file.read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
        assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)

    def test_has_the_whole_stack(self, compose: dict[str, Any]) -> None:
        """Redis, PostgreSQL, two workers, a one-shot publisher, Prometheus and Grafana."""
        services = compose["services"]
        assert set(services) == SERVICES
        assert services["worker"]["deploy"]["replicas"] == 2
        assert services["publisher"]["restart"] == "no"
        for name in WORKER_IMAGE_SERVICES:
            assert services[name]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
            assert (COMPOSE.parent / ".." / "Dockerfile").resolve() == ROOT / "Dockerfile"

    def test_redis_is_configured_as_a_durable_queue(self, compose: dict[str, Any]) -> None:
        """AOF on, fsync every second, and no eviction: what worker.ops.redis_safety checks for."""
        command = compose["services"]["redis"]["command"]
        pairs = dict(zip(command[1::2], command[2::2], strict=True))
        assert pairs == {
            "--appendonly": "yes",
            "--appendfsync": "everysec",
            "--maxmemory-policy": "noeviction",
        }
        assert compose["services"]["redis"]["volumes"] == ["redis-data:/data"]

    @pytest.mark.parametrize("name", WORKER_IMAGE_SERVICES)
    def test_environment_names_settings_the_worker_reads(
        self, compose: dict[str, Any], name: str
    ) -> None:
        """Each SYNCWORKER_* variable is a WorkerSettings field (or --config) with a valid value."""
        env = env_of(compose["services"][name])
        fields = {ENV_PREFIX + f.upper() for f in WorkerSettings.model_fields}
        ours = {k for k in env if k.startswith(ENV_PREFIX)}
        unknown = ours - fields - EXTRA_ENV
        assert not unknown, f"unknown settings: {sorted(unknown)}"
        values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k in fields}
        WorkerSettings(**values)

    def test_worker_metrics_port_is_the_one_prometheus_scrapes(
        self, compose: dict[str, Any]
    ) -> None:
        """The workers' metrics port is exposed and is the port Prometheus asks each replica."""
        worker = compose["services"]["worker"]
        port = env_of(worker)["SYNCWORKER_METRICS_PORT"]
        assert worker["expose"] == [port]
        prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
        (job,) = prometheus["scrape_configs"]
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == ["worker"] and str(sd["port"]) == port

    def test_stop_grace_outlasts_the_drain(self, compose: dict[str, Any]) -> None:
        """docker compose stop waits longer than the worker's drain before it kills."""
        worker = compose["services"]["worker"]
        shutdown = float(env_of(worker)["SYNCWORKER_SHUTDOWN_TIMEOUT"])
        assert seconds(worker["stop_grace_period"]) > shutdown + 2 * FINAL_FLUSH_S

    def test_mounted_files_exist(self, compose: dict[str, Any]) -> None:
        """Every bind mount points at a file or directory in deploy/."""
        for service in compose["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    assert (COMPOSE.parent / source).exists(), source

    def test_commands_are_syncworker_subcommands(self, compose: dict[str, Any]) -> None:
        """The worker runs `run`; the publisher's command is a registered subcommand."""
        parser = build_parser()
        registered = {
            name
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        }
        assert compose["services"]["worker"]["command"] == ["run"]
        publisher = compose["services"]["publisher"]["command"]
        if publisher[0] not in registered and example_config() is None:
            pytest.skip(f"`syncworker {publisher[0]}` is not in this tree yet")
        assert publisher[0] in registered
        parser.parse_args(publisher)

    def test_example_config_is_the_one_baked_into_the_image(self, compose: dict[str, Any]) -> None:
        """SYNCWORKER_CONFIG names the example config the Dockerfile copies to /app/examples."""
        path = env_of(compose["services"]["worker"])["SYNCWORKER_CONFIG"]
        assert path.startswith("/app/examples/")
        config = example_config()
        if config is None:
            pytest.skip("examples/ is not in this tree yet")
        assert ROOT / path.removeprefix("/app/") == config


class TestExtraEnvironmentNames:
    def test_cli_reads_the_config_variable(self) -> None:
        """SYNCWORKER_CONFIG, allowed beside the settings, is what --config defaults to."""
        source = inspect.getsource(common)
        for name in CLI_ENV:
            assert f'"{name}"' in source

    @pytest.mark.parametrize("name", sorted(HANDLER_ENV))
    def test_handler_variables_are_the_ones_the_handlers_read(self, name: str) -> None:
        """Each allowed handler variable is the name the built-in handler's constant holds."""
        module_name, constant = HANDLER_ENV[name]
        if importlib.util.find_spec(module_name) is None:
            pytest.skip(f"{module_name} is not in this tree yet")
        assert getattr(importlib.import_module(module_name), constant) == name
