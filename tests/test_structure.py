"""The architecture the tree promises (docs/architecture.md): one subpackage per role, and imports
that follow the data one way, settings → polling → Gcore client → per-image state → snapshot →
renderer → HTTP. Checked statically for every module, and in fresh interpreters for what a
module pulls in through the whole chain."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from support.tooling import ROOT

PACKAGE = ROOT / "exporter"

FORBIDDEN: dict[str, frozenset[str]] = {
    # what each role may never import, as exporter's subpackages and top-level modules
    "config": frozenset({"gcore", "polling", "metrics", "web", "daemon", "demo", "cli"}),
    "gcore": frozenset({"polling", "metrics", "web", "daemon", "demo", "cli"}),
    "polling": frozenset({"web", "daemon", "demo", "cli"}),
    "metrics": frozenset({"polling", "web", "daemon", "demo", "cli", "gcore.client"}),
    "web": frozenset({"polling", "gcore", "daemon", "demo", "cli"}),
    "demo": frozenset({"config", "gcore", "polling", "metrics", "web", "daemon", "cli"}),
    "daemon": frozenset({"cli"}),
    "vocabulary": frozenset(
        {"config", "gcore", "polling", "metrics", "web", "daemon", "demo", "cli"}
        | {"alerting", "logs", "sharding"}
    ),
}
"""`metrics` may read `gcore.models` (the typed answers it renders), never the client; the shared
words of `vocabulary` belong to no layer, so it imports none."""


def exporter_imports(path: Path) -> set[str]:
    """The `exporter.…` modules `path` imports, without the `exporter.` prefix."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name.removeprefix("exporter.") for name in names if name.startswith("exporter.")}
    return found


def violations(forbidden: dict[str, frozenset[str]]) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        role = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for imported in sorted(exporter_imports(path)):
            for banned in forbidden.get(role, frozenset()):
                if imported == banned or imported.startswith(banned + "."):
                    found.append(f"{path.relative_to(ROOT)} imports exporter.{imported}")
    return found


def test_every_import_follows_the_data_one_way() -> None:
    assert violations(FORBIDDEN) == []


def test_the_direction_check_sees_a_backward_import() -> None:
    """The check above is not vacuous: with web allowed nothing of metrics, web's real imports of
    snapshots and bodies are reported."""
    assert any(
        "exporter/web/app.py imports exporter.metrics" in v
        for v in violations({"web": frozenset({"metrics"})})
    )


def test_every_module_lives_in_a_role() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    shared = {"alerting.py", "identity.py", "logs.py", "sharding.py", "vocabulary.py"}
    assert top == {"__init__.py", "__main__.py", "cli.py"} | shared


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
    sorted(
        f"exporter.metrics.{p.stem}"
        for p in (PACKAGE / "metrics").glob("*.py")
        if p.stem != "__init__"
    ),
)
def test_metrics_load_no_http_library(module: str) -> None:
    loaded = imported_after(module)
    assert "aiohttp" not in loaded
    assert not any(
        m.startswith(("exporter.gcore.client", "exporter.gcore.transport")) for m in loaded
    )


def test_web_serves_snapshots_without_knowing_who_makes_them() -> None:
    """Through the renderer it reads Gcore's typed answers (`gcore.models`), never the client."""
    loaded = imported_after("exporter.web.app")
    assert not any(
        m.startswith(("exporter.polling", "exporter.gcore.", "exporter.daemon"))
        and m != "exporter.gcore.models"
        for m in loaded
    )


def test_no_class_grows_past_about_150_lines() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                assert length <= 150, f"{path.name}: class {node.name} has {length} lines"


FOLDING: Final = frozenset({"settle", "settle_now", "ripe_only"})
"""How `Blocks` folds staged lines: the image store's business alone."""


def names_used(path: Path) -> set[str]:
    """The attributes and keyword arguments `path` names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    keywords = {node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg}
    return attributes | keywords


def test_only_the_metrics_decide_when_blocks_fold() -> None:
    """Polling says what happened (`after_fetch`, `after_page`); the image store decides what
    folds."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] != "metrics":
            assert not names_used(path) & FOLDING, path.relative_to(ROOT)
    assert names_used(PACKAGE / "polling" / "fetcher.py") >= {"after_fetch", "after_page"}


def test_the_architecture_page_names_every_module_once() -> None:
    """docs/architecture.md has one line per module: a module added, moved or removed shows."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `(exporter/[\w/]+\.py)` \|", page, re.M)
    modules = sorted(
        str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"
    )
    assert sorted(listed) == modules
