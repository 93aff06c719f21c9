"""Static checks of the Grafana dashboard and its provisioning (no Prometheus needed).

They keep the JSON importable (grafana.com-style `__inputs`, no datasource uid baked in), in step
with its generator and the alert rules, and limited to the metrics the exporter exposes (the panel
list of docs/dashboard.md is made from it by docs/generate.py, and checked by tests/test_docs.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.core import Metric
from pydantic import SecretStr

from exporter.alerting import (
    DEFAULT_SELECTOR,
    DEFAULTS,
    FAILED_STATUSES,
    KNOWN_STATUSES,
    TRANSITIONAL_STATUSES,
    parse_duration,
)
from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_poller
from exporter.metrics.families import FAMILIES

from .harness import DASHBOARD, REPO, panel_targets

BUILDER = REPO / "grafana" / "build_dashboard.py"
RENDERER = REPO / "deploy" / "prometheus" / "render_rules.py"
PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = ("datasource", "job", "instance", "project_id", "region_id", "kind", "image")
BUILTINS = {"__rate_interval", "__range", "__interval"}
# What Prometheus itself provides.
PROMETHEUS_METRICS = {"ALERTS", "up"}
# The sample names a prometheus_client family of each type exposes (`_created` is disabled).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
# Families the exporter exposes that the dashboard leaves out on purpose, and why.
NOT_SHOWN = {
    "gcore_exporter_scope_cadence": "counts scopes per exporter by how often they are listed;"
    " 'Listing per scope' shows each scope, and the API panels what the listings cost",
    "gcore_exporter_scope_listing_interval_seconds": "settings (interval, discovery interval),"
    " constant per exporter",
    "gcore_exporter_invalid_items": "each skipped item is logged with its endpoint and problem;"
    " an invalid project or region fails its listing, which 'Account listings' shows",
    "gcore_gpu_image_last_error_info": "'Images failing to fetch' shows the most frequent reason",
    "gcore_exporter_api_retries": "'API requests by code' counts retries among the requests",
    "gcore_exporter_rate_limit_pauses": "429 answers show in 'API requests by code'",
    "gcore_exporter_rate_limit_paused": "a pause shows in 'Time since last poll'",
    "gcore_exporter_task_fetch_errors": "'Locked images' shows an empty task state",
    "gcore_exporter_polls": "'Time since last poll' shows whether rounds complete",
    "process_virtual_memory_bytes": "'Exporter memory' shows the resident memory that counts",
    "process_start_time_seconds": "a restart shows as a gap in 'Exporter scrape'",
    "process_open_fds": "the exporter holds one HTTP session: its sockets stay few",
    "process_max_fds": "see process_open_fds",
    "gcore_exporter_scopes": "'Listing per scope' shows each scope's state, and follows the"
    " selection; this counts them per exporter, without project or region",
    "gcore_exporter_shard_ordinal": "panels aggregate over every shard: each image is on one",
    "gcore_exporter_total_shards": "see gcore_exporter_shard_ordinal",
}
# A metric a query selects: by name before `{` or `,`, or inside `__name__=~"a|b"`.
METRIC = re.compile(r"\b((?:gcore_|process_)\w+|ALERTS|up)\s*[{,]")
NAME_MATCHER = re.compile(r'__name__=~"([\w|]+)"')
OVERRIDES = {
    "lock_age": "45m",
    "exporter_down_for": "2m",
    "fetch_failing_for": "20m",
    "transitional_for": "3h",
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


def _registered(monkeypatch: pytest.MonkeyPatch) -> list[Metric]:
    """The families of a poller's registry: the exporter's own metrics, and those of discovery
    and of the failed tasks (collectors that register with the poller). Nothing is polled."""
    monkeypatch.setenv("GCORE_API_KEY", "unused")

    async def collect() -> list[Metric]:
        settings = load_settings(targets=["*"], listen="127.0.0.1:0")
        monitor = new_monitor(settings)
        upstream = Upstream("http://127.0.0.1:9", SecretStr("unused"), settings.resolved_targets())
        async with open_poller(settings, upstream, monitor):
            return list(monitor.telemetry.registry.collect())

    return asyncio.run(collect())


def _exposed(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Every metric family the exporter exposes -> the names a query can select it by."""
    exposed = {family.name: {family.name} for family in FAMILIES}
    for family in _registered(monkeypatch):
        names = {family.name + suffix for suffix in SUFFIXES[family.type]}
        assert {sample.name for sample in family.samples} <= names, family.name
        exposed[family.name] = names
    return exposed


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    """grafana/build_dashboard.py run without site-packages (-S) or environment (-I): with the
    standard library only, as its docstring promises, so no aiohttp or other dependency."""
    return subprocess.run(
        [sys.executable, "-I", "-S", str(BUILDER), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in _panels(dashboard) if p["title"] == title]
    return found


def _steps(dashboard: dict[str, Any], title: str) -> list[tuple[float | None, str]]:
    thresholds = _panel(dashboard, title)["fieldConfig"]["defaults"]["thresholds"]
    return [(step["value"], step["color"]) for step in thresholds["steps"]]


def test_json_is_generated_with_the_standard_library_only() -> None:
    result = _build("--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overrides", [{}, OVERRIDES], ids=["defaults", "set"])
def test_colours_follow_the_alert_thresholds(overrides: dict[str, str]) -> None:
    """Lock age turns orange where GcoreGpuImageLockedTooLong fires; old values turn orange after
    exporter_down_for and red after fetch_failing_for; both scripts take the same --set."""
    options = [arg for name, value in overrides.items() for arg in ("--set", f"{name}={value}")]
    built = _build(*options, "--output", "-")
    assert built.returncode == 0, built.stderr
    board = json.loads(built.stdout)
    rendered = subprocess.run(
        [sys.executable, str(RENDERER), *options], capture_output=True, text=True, check=True
    )
    rules = [rule for group in yaml.safe_load(rendered.stdout)["groups"] for rule in group["rules"]]
    fors = {rule["alert"]: rule.get("for") for rule in rules}
    (lock,) = [
        r
        for r in rules
        if "gcore_gpu_image_lock_age_seconds" in r["expr"] and r["labels"]["severity"] == "warning"
    ]
    thresholds = {**DEFAULTS, **overrides}
    lock_age = parse_duration(thresholds["lock_age"])
    down_for = parse_duration(thresholds["exporter_down_for"])
    failing_for = parse_duration(thresholds["fetch_failing_for"])
    assert (
        f"(gcore_gpu_image_lock_age_seconds{{{DEFAULT_SELECTOR}}}) > {lock_age:g}\n"
        in (lock["expr"])
    )
    assert parse_duration(fors["GcoreGpuImageExporterDown"]) == down_for
    assert parse_duration(fors["GcoreGpuImageFetchFailing"]) == failing_for
    assert _steps(board, "Locked images") == [(None, "green"), (lock_age, "orange")]
    transitional = parse_duration(thresholds["transitional_for"])
    assert _steps(board, "Images not active") == [(None, "green"), (transitional, "orange")]
    stale = [(None, "green"), (down_for, "orange"), (failing_for, "red")]
    assert _steps(board, "Time since last poll") == stale
    assert _steps(board, "Oldest successful fetch") == stale
    assert _steps(board, "Oldest listing") == stale


def test_bad_threshold_options_are_rejected() -> None:
    result = _build("--set", "lock_timeout=1m", "--output", "-")
    assert result.returncode == 2
    assert "unknown threshold(s) lock_timeout" in result.stderr
    assert not result.stdout


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
        assert var["multi"] and var["includeAll"]
        # All of Job is the jobs listed: `.*` would take in `up` of every other job
        assert var["allValue"] == (None if name == "job" else ".*"), name
        assert var["definition"] == var["query"]["query"]
    # shown by name, selected by id: the names come from the info series
    for name, info in (
        ("image", "gcore_gpu_image_info"),
        ("project_id", "gcore_gpu_project_info"),
        ("region_id", "gcore_gpu_region_info"),
    ):
        assert info in variables[name]["definition"], name
        regex = variables[name]["regex"]
        assert "(?<text>" in regex and "(?<value>" in regex, name
    assert variables["kind"]["definition"].endswith(", kind)")
    # each variable sees only those before it
    order = list(variables)
    for position, name in enumerate(order):
        for used in re.findall(r"\$(\w+)", variables[name].get("definition", "")):
            if used in variables:
                assert order.index(used) < position, f"{name} uses ${used}, defined later"


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
    units = {
        prop["value"]
        for panel in panels
        for override in panel.get("fieldConfig", {}).get("overrides", [])
        for prop in override["properties"]
        if prop["id"] == "unit"
    } | {p.get("fieldConfig", {}).get("defaults", {}).get("unit") for p in panels}
    assert {"bytes", "s", "dateTimeFromNow"} <= units


def test_queries_use_known_metrics_and_variables(
    dashboard: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = set(VARIABLES) | BUILTINS
    exposed = _exposed(monkeypatch)
    known = set().union(*exposed.values()) | PROMETHEUS_METRICS
    used: set[str] = set()
    queries = [(title, target["expr"]) for title, target in panel_targets(dashboard)]
    queries += [(v["name"], v["definition"]) for v in dashboard["templating"]["list"][1:]]
    for title, target in panel_targets(dashboard):
        assert target["datasource"] == PROMETHEUS_DS, title
    for title, expr in queries:
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in names or var.isdigit(), f"{title}: unknown variable ${var}"
        metrics = set(METRIC.findall(expr))
        metrics |= {name for names in NAME_MATCHER.findall(expr) for name in names.split("|")}
        assert metrics, f"{title}: no selector with labels in {expr}"
        assert metrics <= known, f"{title}: unknown metrics {metrics - known}"
        used |= metrics
    # Every family the exporter exposes is on the dashboard, unless left out on purpose.
    shown = {family for family, selectable in exposed.items() if selectable & used}
    assert shown == set(exposed) - set(NOT_SHOWN)


def test_image_panels_follow_the_kind_and_discovery_panels_the_endpoint(
    dashboard: dict[str, Any],
) -> None:
    """Only gcore_gpu_image_info knows an image's kind, so every query of per-image series must
    go through it with $kind; discovery series mix image listings of a project/region with
    account-wide ones (no project or region), so every query of them names the endpoint."""
    per_image = {family.name for family in FAMILIES}
    discovery = re.compile(r"gcore_exporter_discovery_\w+\{([^}]*)\}")
    queries = [(title, target["expr"]) for title, target in panel_targets(dashboard)]
    queries += [(v["name"], v["definition"]) for v in dashboard["templating"]["list"][1:]]
    checked = 0
    for title, expr in queries:
        if set(METRIC.findall(expr)) & per_image and title != "kind":
            assert "$kind" in expr, f"{title}: does not follow the Kind variable: {expr}"
            checked += 1
        for matchers in discovery.findall(expr):
            assert "endpoint=" in matchers or "endpoint!=" in matchers, f"{title}: {expr}"
            checked += 1
    assert checked >= 20


def test_status_colours_follow_the_status_groups(dashboard: dict[str, Any]) -> None:
    (mapping,) = _panel(dashboard, "Status timeline")["fieldConfig"]["defaults"]["mappings"]
    colours = {option["text"]: option["color"] for option in mapping["options"].values()}
    assert list(colours) == [*KNOWN_STATUSES, "unknown"]
    assert colours["active"] == "green"
    assert {colours[status] for status in TRANSITIONAL_STATUSES} == {"blue"}
    assert {colours[status] for status in FAILED_STATUSES} <= {"red", "orange"}
    assert colours["unknown"] == "purple"


def test_descriptions_point_at_other_panels(dashboard: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in _panels(dashboard)}
    for panel in _panels(dashboard):
        for name in re.findall(r"(?:see|in) '([^']+)'", panel.get("description", ""), re.I):
            assert name in titles - {panel["title"]}, f"{panel['title']} points at {name!r}"


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


def test_selector_and_cluster_label_reach_every_query() -> None:
    """`--selector` and `--cluster-label` (the rules' options): a Cluster variable first, every
    selection of the exporter's series carries both, every grouping by image or scope keeps the
    cluster apart, and the alerts of a selected cluster (or of none) are shown."""
    selector = 'job="gpu-images",namespace="mon"'
    built = _build("--selector", selector, "--cluster-label", "k8s_cluster", "--output", "-")
    assert built.returncode == 0, built.stderr
    board = json.loads(built.stdout)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert tuple(variables) == ("datasource", "cluster", *VARIABLES[1:])
    assert variables["cluster"]["definition"] == (
        f"label_values(gcore_exporter_build_info{{{selector}}}, k8s_cluster)"
    )
    queries = [target["expr"] for _, target in panel_targets(board)]
    queries += [v["definition"] for v in board["templating"]["list"][2:]]
    for expr in queries:
        for name, matchers in re.findall(r"(\b\w*)\{([^}]*)\}", expr):
            if name == "ALERTS":
                assert 'k8s_cluster=~"$cluster|"' in matchers, expr
            else:
                assert selector in matchers, expr
                assert 'k8s_cluster=~"$cluster"' in matchers, expr
        for grouping in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr):
            if "project_id" in grouping:
                assert "k8s_cluster" in grouping.split(", "), expr
    assert DEFAULT_SELECTOR not in built.stdout


def test_no_job_is_baked_in_unless_the_builder_is_asked(dashboard: dict[str, Any]) -> None:
    """Scraped through the prometheus.io annotations the job is kubernetes-service-endpoints:
    the Job variable lists whatever job exports gcore_exporter_build_info, and every query
    selects by it alone; `--job` bakes a job back in."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["job"]["definition"] == "label_values(gcore_exporter_build_info, job)"
    text = json.dumps(dashboard)
    assert DEFAULT_SELECTOR.replace('"', '\\"') not in text
    for title, target in panel_targets(dashboard):
        if "ALERTS" not in target["expr"]:
            assert 'job=~"$job"' in target["expr"], title
    built = _build("--job", "gpu-images", "--output", "-")
    assert built.returncode == 0, built.stderr
    board = json.loads(built.stdout)
    baked = {v["name"]: v for v in board["templating"]["list"]}["job"]["definition"]
    assert baked == 'label_values(gcore_exporter_build_info{job="gpu-images"}, job)'


# Panels with a row (or a bar) per image: each query keeps the top TOP, the others of a merged
# table only the same images.
PER_IMAGE_PANELS = {
    "Images not active",
    "Locked images",
    "Images failing to fetch",
    "Status timeline",
    "Size per image",
    "Image age",
    "Image tags",
    "Image inventory",
}


def test_per_image_panels_show_at_most_the_top_images(dashboard: dict[str, Any]) -> None:
    seen = set()
    for title, target in panel_targets(dashboard):
        if title in PER_IMAGE_PANELS:
            seen.add(title)
            assert re.search(r"\btopk\(100, ", target["expr"]), f"{title}: {target['expr']}"
    assert seen == PER_IMAGE_PANELS


def test_rows_below_the_first_two_start_collapsed(dashboard: dict[str, Any]) -> None:
    """A collapsed row holds its panels (Grafana's form): their queries wait until it opens."""
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [(r["title"], r["collapsed"]) for r in rows] == [
        ("Overview", False),
        ("Needs attention", False),
        ("Discovery", True),
        ("Images", True),
        ("GPU clusters", True),
        ("Image pipeline", True),
        ("Exporter and Gcore API", True),
    ]
    for row in rows:
        assert bool(row["panels"]) == row["collapsed"], row["title"]
    assert {p["title"] for p in rows[3]["panels"]} >= {"Image inventory", "Image tags"}


def test_bad_selector_is_rejected() -> None:
    result = _build("--selector", "job=gpu", "--output", "-")
    assert result.returncode == 2
    assert "is not label matchers" in result.stderr
