"""The module boundaries the architecture promises (README, "Architecture"), checked in fresh
interpreters so that an import added anywhere along the chain shows up."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from tooling import ROOT


def imported_after(module: str) -> set[str]:
    """Top-level packages and exporter modules loaded by importing `module` alone."""
    code = (
        f"import sys, json; import {module}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "{m for m in sys.modules if m.startswith('exporter.')})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    "module",
    [
        "exporter.families",
        "exporter.exposition",
        "exporter.snapshot",
        "exporter.image_store",
        "exporter.vocabulary",
    ],
)
def test_rendering_and_state_import_no_http_client(module: str) -> None:
    loaded = imported_after(module)
    assert "aiohttp" not in loaded
    assert "exporter.client" not in loaded


def test_web_serves_snapshots_without_knowing_who_makes_them() -> None:
    loaded = imported_after("exporter.web")
    assert loaded.isdisjoint(
        {"exporter.runtime", "exporter.scheduler", "exporter.fetcher", "exporter.client"}
    )


def test_no_class_grows_past_about_150_lines() -> None:
    for path in sorted((ROOT / "exporter").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                assert length <= 170, f"{path.name}: class {node.name} has {length} lines"
