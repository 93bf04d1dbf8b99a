"""Shared helpers for the deployment checks: paths, YAML loading, kustomize rendering, tools.

The checks run without a container engine or a cluster: they lint and validate the files,
and compare them with the settings the worker actually reads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

INSTALL_HINT = "install the deploy checks' tools: pip install -e '.[deploy-check]' (make install)"

CLI_ENV = {"SYNCWORKER_CONFIG"}
"""Variables the command line reads besides WorkerSettings fields (see worker/commands)."""

HANDLER_ENV = {"SYNCWORKER_POSTGRES_DSN": ("handlers.sql", "DSN_ENV")}
"""Variables built-in handlers read, by the module constant that names them."""

EXTRA_ENV = CLI_ENV | set(HANDLER_ENV)
"""Every SYNCWORKER_* variable that is legitimately not a WorkerSettings field."""


def require_module(name: str) -> None:
    """Fail (never skip) when a checking tool is missing, saying how to install it."""
    if importlib.util.find_spec(name) is None:
        pytest.fail(f"python module {name!r} is missing: {INSTALL_HINT}")


def tool(name: str) -> str:
    """Path of a console tool installed next to this Python (the venv's bin), or on PATH."""
    beside = shutil.which(name, path=os.path.dirname(sys.executable))
    found = beside or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return found


def load_yaml(path: Path) -> Any:
    require_module("yaml")
    import yaml

    return yaml.safe_load(path.read_text())


def load_all(text: str) -> list[dict[str, Any]]:
    require_module("yaml")
    import yaml

    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with `kubectl kustomize` (built in, offline)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: it renders the kustomize overlays offline")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def env_list_to_dict(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in env}


def example_config() -> Path | None:
    """The order/payment example's worker config, or None while examples/ is absent.

    The example is built separately; until `examples/` exists the checks that need it skip
    (and say so). Once `examples/` exists, a missing config file is a failure.
    """
    if not (ROOT / "examples").is_dir():
        return None
    path = ROOT / "examples" / "order_payment" / "worker.toml"
    assert path.is_file(), f"deploy/ and the Dockerfile expect the example config at {path}"
    return path
