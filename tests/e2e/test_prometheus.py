"""End to end: exporters -> real Prometheus -> our alert rules and dashboard queries.

Two scenarios run side by side (see scenarios.py): in `failing`, two exporter replicas watch the
same targets; every alert of deploy/prometheus/rules.yaml but ExporterDown must fire once, with
the right labels, and every dashboard query must return data, with counts that replicas do not
double; in `healthy` no alert may fire. Thresholds are shortened, so the module takes ~30 s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from support.tooling import load_render_rules

from .harness import (
    DASHBOARD,
    JOB,
    PrometheusError,
    Stack,
    builtin_variables,
    format_multi,
    interpolate,
    panel_targets,
    resolve_options,
    resolve_variable,
    wait_for,
)
from .scenarios import Scenario

pytestmark = pytest.mark.slow  # runs Prometheus against two exporters (about 25 s)

ALERT_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _expected(scenario: Scenario, stack: Stack) -> list[tuple[str, dict[str, str]]]:
    """The scenario's expected alerts with the placeholder filled in."""
    fill = {"$dead": stack.extra_scrape_targets[0]}
    return [
        (name, {k: fill.get(v, v) for k, v in labels.items()})
        for name, labels in scenario.expected_alerts
    ]


def _matches(alert: dict[str, str], name: str, labels: dict[str, str]) -> bool:
    return alert.get("alertname") == name and all(alert.get(k) == v for k, v in labels.items())


def _wait_for_alerts(scenario: Scenario, stack: Stack) -> list[dict[str, str]]:
    expected = _expected(scenario, stack)

    def all_firing() -> list[dict[str, str]] | None:
        firing = stack.prom.firing()
        ok = all(any(_matches(a, n, labels) for a in firing) for n, labels in expected)
        return firing if ok else None

    def missing() -> str:
        firing = stack.prom.firing()
        left = [(n, lb) for n, lb in expected if not any(_matches(a, n, lb) for a in firing)]
        return f"not firing yet: {left}\n{stack.diagnostics()}"

    return wait_for("the scenario's alerts to fire", all_firing, ALERT_TIMEOUT, details=missing)


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in dashboard["templating"]["list"] if v["type"] == "query"]


def _resolve_all(stack: Stack, dashboard: dict[str, Any], *, concrete: bool) -> dict[str, Any]:
    """Every variable's options; the later ones see the earlier ones as All (.*) or as the
    explicit multi-selection of every option (Grafana's `(a|b|c)`), when `concrete`."""
    now = time.time()
    values: dict[str, str] = {}
    options: dict[str, list[str]] = {}
    for var in _variables(dashboard):
        found = resolve_variable(stack.prom, var, values, stack.started_at, now)
        options[var["name"]] = found
        assert found, f"variable {var['name']} has no values (with {values})"
        values[var["name"]] = format_multi(sorted(found)) if concrete else ".*"
    return {"options": options, "values": values}


def test_alerts_of_the_scenario_fire(scenarios: dict[str, tuple[Scenario, Stack]]) -> None:
    scenario, stack = scenarios["failing"]
    firing = _wait_for_alerts(scenario, stack)
    # Each fires once although two replicas watch it: only ReplicaDown names an instance.
    for name, labels in _expected(scenario, stack):
        assert len([a for a in firing if _matches(a, name, labels)]) == 1, (name, labels)
    for alert in firing:
        if alert["alertname"] != "GcoreGpuImageExporterReplicaDown":
            assert "instance" not in alert, alert
    # Both replicas are up, so the exporter is not down, at any time of the run.
    assert not stack.prom.query(
        'max_over_time(ALERTS{alertname="GcoreGpuImageExporterDown", alertstate="firing"}[5m])'
    )
    # Uploads that finished are not alerts, and each failing image gets the one right alert.
    for alert in firing:
        assert alert.get("image_id") not in ("img-upload-a", "img-upload-b"), alert
        assert not (alert.get("image_id") == "img-deleted" and "FetchFailing" in alert["alertname"])
        assert not (alert.get("image_id") == "img-denied" and "Missing" in alert["alertname"])
        if alert["alertname"] != "GcoreGpuImageExporterDown":
            assert alert.get("job") == JOB, alert
    # Annotations render: no template errors, and an image's description names it.
    names = {i["id"]: i["name"] for scope in scenario.fake.images.values() for i in scope.values()}
    for seen in stack.prom.alerts():
        text = json.dumps(seen["annotations"])
        assert "error expanding template" not in text, seen
        assert "{{" not in seen["annotations"]["summary"], seen
        image_id = seen["labels"].get("image_id")
        if image_id and seen["state"] == "firing":
            assert names.get(image_id, image_id) in seen["annotations"]["description"], seen
        if seen["labels"]["alertname"] == "GcoreGpuImageDiscoveryFailing":
            where = 'in project "ml-platform" (1), region 12'
            assert where in seen["annotations"]["description"], seen
        if image_id == "img-queued":  # a discovered scope: its project and region have names
            where = 'in project "ml-research" (3), region "Luxembourg-2" (30)'
            assert where in seen["annotations"]["description"], seen
    # Of the failed tasks (an old one, one that is no image task, an ERROR lock's task without
    # project), only the image upload that failed within the window ever alerted, and says why.
    ever = stack.prom.query('max_over_time(ALERTS{alertname="GcoreGpuImageTaskFailed"}[5m])')
    assert {a["metric"]["task_id"] for a in ever} == {"task-upload-failed"}, ever
    (failed,) = [a for a in stack.prom.alerts() if a["labels"]["alertname"].endswith("TaskFailed")]
    description = failed["annotations"]["description"]
    for part in (
        'Task task-upload-failed (download_image) in project "ml-research" (3)',
        'region "Luxembourg-2" (30)',
        "it names GPU image img-upload-failed",
        "Error: Image download failed: HTTP 404 from https://files.example.com/rocky-9.qcow2.",
    ):
        assert part in description, description
    # The 429 and 500 bursts were seen and the images recovered.
    prom = stack.prom
    for code in ("429", "500", "401", "403", "404"):
        assert prom.query(f'gcore_exporter_api_requests_total{{code="{code}"}} > 0'), code
    wait_for(
        "img-throttled and img-flaky up again",
        lambda: prom.query(
            "count(min by (image_id)"
            ' (gcore_gpu_image_up{image_id=~"img-throttled|img-flaky"}) == 1) == 2'
        ),
        ALERT_TIMEOUT,
        details=stack.diagnostics,
    )
    errors = prom.query('gcore_gpu_image_fetch_errors_total{reason=~"rate_limited|server_error"}')
    assert {e["metric"]["reason"] for e in errors} == {"rate_limited", "server_error"}


def test_template_variables_return_values(
    scenarios: dict[str, tuple[Scenario, Stack]], dashboard: dict[str, Any]
) -> None:
    scenario, stack = scenarios["failing"]
    _wait_for_alerts(scenario, stack)  # every image has been through its faults by then
    for concrete in (False, True):
        options = _resolve_all(stack, dashboard, concrete=concrete)["options"]
        assert options["job"] == [JOB]
        assert {*stack.exporter_instances, *stack.extra_scrape_targets} <= set(options["instance"])
        assert sorted(options["project_id"]) == ["1", "3"]
        # region 12 has no image series, only its failing listing; 31 no GPU service at all
        assert sorted(options["region_id"]) == ["10", "11", "12", "30", "31"]
        assert sorted(options["kind"]) == ["baremetal", "virtual"]
        # by name in the picker, image ids as values; images without info (404) are included
        assert sorted(options["image"]) == sorted(scenario.images)
    # Projects and regions show their names where the exporter lists them, else their ids.
    variables = {v["name"]: v for v in _variables(dashboard)}
    values = {"job": ".*", "instance": ".*", "project_id": ".*", "kind": ".*"}
    now = time.time()
    texts = {
        name: dict(resolve_options(stack.prom, variables[name], values, stack.started_at, now))
        for name in ("project_id", "region_id")
    }
    assert texts["project_id"] == {"1": "ml-platform", "3": "ml-research"}
    assert texts["region_id"] == {
        **{r: r for r in ("10", "11", "12")},
        **{"30": "Luxembourg-2", "31": "Frankfurt"},
    }
    # One kind: only its images, and those without info (which have no kind: img-deleted).
    values = {**values, "region_id": ".*", "kind": "baremetal"}
    images = set(resolve_variable(stack.prom, variables["image"], values, stack.started_at, now))
    virtual = stack.prom.query('group by (image_id) (gcore_gpu_image_info{kind="virtual"})')
    assert {"img-bm", "img-deleted"} <= images
    assert not images & {v["metric"]["image_id"] for v in virtual}, images


def test_every_panel_query_returns_data(
    scenarios: dict[str, tuple[Scenario, Stack]], dashboard: dict[str, Any]
) -> None:
    scenario, stack = scenarios["failing"]
    _wait_for_alerts(scenario, stack)
    targets = list(panel_targets(dashboard))
    assert len(targets) >= 25
    problems: list[str] = []
    for concrete in (False, True):
        values = _resolve_all(stack, dashboard, concrete=concrete)["values"]
        now = time.time()
        values.update(builtin_variables(now - stack.started_at))
        for title, target in targets:
            expr = interpolate(target["expr"], values)
            try:
                if target.get("instant"):
                    result = stack.prom.query(expr, now)
                else:
                    result = stack.prom.query_range(expr, stack.started_at, now)
            except PrometheusError as exc:
                problems.append(f"{title} [{target['refId']}] does not run: {exc}")
                continue
            if not result:
                selection = "explicit selection" if concrete else "All"
                problems.append(f"{title} [{target['refId']}] ({selection}) no data: {expr}")
    assert not problems, "\n".join(problems)


def _panel_query(dashboard: dict[str, Any], title: str, values: dict[str, str]) -> str:
    (expr,) = [t["expr"] for name, t in panel_targets(dashboard) if name == title][:1]
    return interpolate(expr, values)


def test_no_alert_fires_twice_and_counts_stay_right_with_two_replicas(
    scenarios: dict[str, tuple[Scenario, Stack]], dashboard: dict[str, Any]
) -> None:
    scenario, stack = scenarios["failing"]
    _wait_for_alerts(scenario, stack)
    prom = stack.prom
    per_image = f"gcore_gpu_image_up{{job={JOB!r}}}".replace("'", '"')
    assert prom.scalar(f"count({per_image})") == 2 * len(scenario.images)  # both replicas
    # At no time of the run did two alerts differ only in the replica they came from.
    alerts = 'ALERTS{alertname!="GcoreGpuImageExporterReplicaDown"}'
    twice = prom.query(f"max_over_time((count without (instance, pod) ({alerts}) > 1)[5m:1s])")
    assert not twice, twice
    values = _resolve_all(stack, dashboard, concrete=False)["values"]
    values.update(builtin_variables(time.time() - stack.started_at))
    assert prom.scalar(_panel_query(dashboard, "Images monitored", values)) == len(scenario.images)
    scopes = scenario.scopes
    assert prom.scalar(_panel_query(dashboard, "Scopes listed", values)) == scopes["listed"]
    assert prom.scalar(_panel_query(dashboard, "Scopes failing", values)) == scopes["failing"]
    unavailable = prom.scalar(_panel_query(dashboard, "Scopes without GPU service", values))
    assert unavailable == scopes["unavailable"]
    # The failed image tasks: one row, with the names of its project and region.
    (row,) = prom.query(_panel_query(dashboard, "Failed image tasks", values))
    assert row["metric"]["task_id"] == "task-upload-failed"
    assert (row["metric"]["project_name"], row["metric"]["region_name"]) == (
        "ml-research",
        "Luxembourg-2",
    )
    assert row["metric"]["error"].startswith("Image download failed"), row
    # Time in status: the image stuck in queued since its updated_at, two days ago.
    rows = prom.query(_panel_query(dashboard, "Images not active", values))
    (queued,) = [r for r in rows if r["metric"]["image_id"] == "img-queued"]
    assert 2 * 86400 - 60 < float(queued["value"][1]) < 2 * 86400 + 120, queued
    # Account-wide listings: projects, regions and failed tasks, once each, all fine.
    rows = prom.query(_panel_query(dashboard, "Account listings", values))
    assert sorted((r["metric"]["endpoint"], r["value"][1]) for r in rows) == [
        ("projects", "1"),
        ("regions", "1"),
        ("tasks", "1"),
    ]
    # img-deleted never succeeded: its failures are counted all the same, once per image.
    rows = prom.query(_panel_query(dashboard, "Images failing to fetch", values))
    by_image = [row["metric"]["image_id"] for row in rows]
    assert len(by_image) == len(set(by_image)), rows
    (deleted,) = [row for row in rows if row["metric"]["image_id"] == "img-deleted"]
    assert deleted["metric"]["reason"] == "not_found"
    assert float(deleted["value"][1]) > 0, deleted


def test_healthy_run_fires_no_alert(
    scenarios: dict[str, tuple[Scenario, Stack]], rules: str
) -> None:
    _, stack = scenarios["healthy"]
    prom = stack.prom
    parse = load_render_rules().parse_duration
    fors = [r["for"] for g in yaml.safe_load(rules)["groups"] for r in g["rules"] if "for" in r]
    longest_for = max(parse(duration) for duration in fors)
    scrapes = int(longest_for) + 6
    # Long enough that any rule whose condition held could have gone from pending to firing.
    wait_for(
        f"{scrapes} scrapes of the healthy exporter",
        lambda: prom.query(
            f'count_over_time(up{{instance="{stack.exporter_instance}"}}[5m]) >= {scrapes}'
        ),
        ALERT_TIMEOUT,
        details=stack.diagnostics,
    )
    assert prom.query('gcore_gpu_image_status{image_id="h-new", status="active"} == 1')
    assert prom.query('gcore_gpu_image_locked{image_id="h-busy"} == 1')
    assert prom.query(f"count(gcore_gpu_image_up == 1) == {len(stack.fake.images[(2, 20)]) + 1}")
    ever_fired = prom.query('max_over_time(ALERTS{alertstate="firing"}[5m])')
    assert not ever_fired, f"alerts fired in the healthy run: {ever_fired}\n{stack.diagnostics()}"
    assert prom.alerts() == [], f"alerts pending at the end: {prom.alerts()}"
    # A clean shutdown is part of being healthy: SIGTERM ends the exporter with 0.
    assert stack.exporter is not None
    started = time.monotonic()
    code = stack.exporter.stop(timeout=10)
    assert code == 0, f"exporter exit code {code} after SIGTERM\n{stack.exporter.tail()}"
    assert time.monotonic() - started < 10
