"""Static checks of the Grafana dashboard and its provisioning (no Prometheus needed).

They keep the JSON importable (grafana.com-style `__inputs`, no datasource uid baked in), in step
with its generator and the README, and limited to the exporter's fixed metric names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .harness import DASHBOARD, REPO, panel_targets

PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = ("datasource", "job", "instance", "project_id", "region_id", "image")
BUILTINS = {"__rate_interval", "__range", "__interval"}
# The exporter's fixed metric names, plus what Prometheus itself provides.
METRICS = {
    "gcore_gpu_image_info",
    "gcore_gpu_image_status",
    "gcore_gpu_image_size_bytes",
    "gcore_gpu_image_min_disk_bytes",
    "gcore_gpu_image_min_ram_bytes",
    "gcore_gpu_image_locked",
    "gcore_gpu_image_lock_age_seconds",
    "gcore_gpu_image_task_info",
    "gcore_gpu_image_created_timestamp_seconds",
    "gcore_gpu_image_updated_timestamp_seconds",
    "gcore_gpu_image_age_seconds",
    "gcore_gpu_image_tag_info",
    "gcore_gpu_image_up",
    "gcore_gpu_image_last_success_timestamp_seconds",
    "gcore_gpu_image_fetch_errors_total",
    "gcore_exporter_build_info",
    "gcore_exporter_api_requests_total",
    "gcore_exporter_api_request_duration_seconds_bucket",
    "gcore_exporter_poll_duration_seconds",
    "gcore_exporter_last_poll_timestamp_seconds",
    "gcore_exporter_images",
    "ALERTS",
    "up",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_json_is_generated_from_build_dashboard() -> None:
    script = REPO / "grafana" / "build_dashboard.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_importable_and_datasource_agnostic(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "gcore-gpu-images"
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None
    [ds_input] = dashboard["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    for ref in _datasources(dashboard):
        assert isinstance(ref, dict), f"datasource given by name: {ref!r}"
        if ref.get("type") != "grafana":  # the built-in annotation source
            assert ref == PROMETHEUS_DS
    text = json.dumps(dashboard)
    # ${DS_PROMETHEUS} only seeds the datasource variable on import
    assert text.count("${DS_PROMETHEUS}") == 2
    ds_var = dashboard["templating"]["list"][0]
    assert ds_var["name"] == "datasource"
    assert ds_var["type"] == "datasource"
    assert ds_var["query"] == "prometheus"
    assert ds_var["current"]["value"] == "${DS_PROMETHEUS}"


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert tuple(variables) == VARIABLES
    for name in VARIABLES[1:]:
        var = variables[name]
        assert var["datasource"] == PROMETHEUS_DS
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
        assert var["definition"] == var["query"]["query"]
    image = variables["image"]
    assert "gcore_gpu_image_info" in image["definition"]
    assert "(?<text>" in image["regex"] and "(?<value>" in image["regex"]


def test_panels_are_documented_and_laid_out(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard))
    assert len({p["id"] for p in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert len(panel.get("description", "")) >= 60, f"{panel['title']}: say what to do"
        assert panel["datasource"] == PROMETHEUS_DS
        defaults = panel["fieldConfig"]["defaults"]
        if panel["type"] in ("stat", "timeseries", "bargauge"):
            assert defaults.get("unit"), f"{panel['title']}: no unit"
        if panel["type"] == "stat":
            assert len(defaults["thresholds"]["steps"]) >= 1
    units = {
        prop["value"]
        for panel in panels
        for override in panel.get("fieldConfig", {}).get("overrides", [])
        for prop in override["properties"]
        if prop["id"] == "unit"
    } | {p.get("fieldConfig", {}).get("defaults", {}).get("unit") for p in panels}
    assert {"bytes", "s", "dateTimeFromNow"} <= units


def test_queries_use_known_metrics_and_variables(dashboard: dict[str, Any]) -> None:
    names = set(VARIABLES) | BUILTINS
    used: set[str] = set()
    queries = [(title, target["expr"]) for title, target in panel_targets(dashboard)]
    queries += [(v["name"], v["definition"]) for v in dashboard["templating"]["list"][1:]]
    for title, target in panel_targets(dashboard):
        assert target["datasource"] == PROMETHEUS_DS, title
    for title, expr in queries:
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in names or var.isdigit(), f"{title}: unknown variable ${var}"
        metrics = set(re.findall(r"\b((?:gcore_\w+)|ALERTS|up)\s*[{,]", expr))
        assert metrics, f"{title}: no selector with labels in {expr}"
        assert metrics <= METRICS, f"{title}: unknown metrics {metrics - METRICS}"
        used |= metrics
    # Everything the exporter exposes is on the dashboard somewhere.
    assert used == METRICS


def test_docs_describe_every_panel(dashboard: dict[str, Any]) -> None:
    docs = (REPO / "README.md").read_text(encoding="utf-8")
    for panel in _panels(dashboard):
        assert panel["title"] in docs, f"README.md lacks panel {panel['title']!r}"


def test_provisioning_points_grafana_at_the_dashboard() -> None:
    root = REPO / "grafana" / "provisioning"
    datasources = yaml.safe_load((root / "datasources" / "prometheus.yaml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    providers = yaml.safe_load((root / "dashboards" / "gcore-gpu-image-exporter.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "${GCORE_DASHBOARDS_DIR}"
    assert DASHBOARD.parent == REPO / "grafana"
