"""The Dockerfile lints clean and builds the image the deployment files expect."""

from __future__ import annotations

import fnmatch
import subprocess

from tests.deploy import dockerfile
from tests.deploy.support import DOCKERFILE, ROOT, example_config, tool
from worker.settings import WorkerSettings

BUILD_TOOLS = ("apt-get", "apk ", "gcc", "build-essential", "make ")


def stages() -> list[dockerfile.Stage]:
    return dockerfile.parse(DOCKERFILE)[1]


class TestDockerfile:
    def test_hadolint_finds_nothing(self) -> None:
        """hadolint reports no rule violation at any level."""
        result = subprocess.run(
            [tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_final_stage_is_slim_and_copies_only_the_environment(self) -> None:
        """Two stages on a slim Python base; the final one installs nothing and builds nothing."""
        build, final = stages()
        assert build.name == "build"
        assert "slim" in build.base and "slim" in final.base
        assert final.name is None
        for run in final.all("RUN"):
            assert not any(t in run.arguments for t in BUILD_TOOLS), run.arguments
            assert "pip install" not in run.arguments, "install in the build stage only"
        copied = [c.arguments for c in final.all("COPY")]
        assert any(c.startswith("--from=build /opt/syncworker") for c in copied)

    def test_build_stage_installs_the_project_non_editable(self) -> None:
        """The build stage pip-installs the project itself (not -e) into the copied venv."""
        build = stages()[0]
        installs = [r.arguments for r in build.all("RUN") if "pip install" in r.arguments]
        assert len(installs) == 1
        assert "/opt/syncworker/bin/pip install" in installs[0]
        assert " -e " not in installs[0] and "--editable" not in installs[0]
        assert '".[${EXTRAS}]"' in installs[0]

    def test_runs_as_a_numeric_non_root_user(self) -> None:
        """USER is a numeric uid other than 0, so runAsNonRoot can verify it."""
        user = stages()[-1].last("USER").arguments
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0

    def test_entrypoint_and_command_are_exec_form(self) -> None:
        """ENTRYPOINT ["syncworker"] and CMD ["run"]: no shell between Docker and Python."""
        final = stages()[-1]
        assert final.last("ENTRYPOINT").exec_form() == ["syncworker"]
        assert final.last("CMD").exec_form() == ["run"]
        assert final.last("STOPSIGNAL").arguments == "SIGTERM"

    def test_healthcheck_asks_healthz_without_curl(self) -> None:
        """The HEALTHCHECK runs the bundled Python probe in exec form."""
        check = stages()[-1].last("HEALTHCHECK")
        assert check.exec_form() == ["python", "-m", "worker.ops.healthcheck"]
        assert "--timeout=" in check.arguments

    def test_exposes_the_default_metrics_port(self) -> None:
        """EXPOSE and the baked-in SYNCWORKER_METRICS_PORT equal the settings' default."""
        final = stages()[-1]
        default = WorkerSettings.model_fields["metrics_port"].default
        assert final.last("EXPOSE").arguments == str(default)
        env = " ".join(e.arguments for e in final.all("ENV"))
        assert f"SYNCWORKER_METRICS_PORT={default}" in env

    def test_every_copied_path_exists_and_is_in_the_build_context(self) -> None:
        """Each COPY source exists in the repository and .dockerignore lets it through."""
        patterns = [
            line.strip()
            for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for stage in stages():
            for copy in stage.all("COPY"):
                words = copy.words()
                if words[0].startswith("--from="):
                    continue
                for source in words[:-1]:
                    if source == "examples" and example_config() is None:
                        continue  # the order/payment example is not in this tree yet
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                    assert _included(source, patterns), f"COPY {source}: .dockerignore drops it"


def _included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if body == "**" or fnmatch.fnmatch(path, body) or path == body:
            included = negate
    return included
