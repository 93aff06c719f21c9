"""Alert rules: one source (render_rules.py), its two renderings, promtool checks and unit tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from support.tooling import ROOT, load_render_rules, require_tool

from exporter.alerting import FAILED_STATUSES, KNOWN_STATUSES, TRANSITIONAL_STATUSES

RENDERER = ROOT / "deploy" / "prometheus" / "render_rules.py"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus-operator" / "prometheusrule.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
DEPLOY = ROOT / "docs" / "deploy.md"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yaml"))
ALERTS = {
    "GcoreGpuImageNotActive",
    "GcoreGpuImageLockedTooLong",
    "GcoreGpuImageLockStuck",
    "GcoreGpuImageTaskFailed",
    "GcoreGpuImageMissing",
    "GcoreGpuImageFetchFailing",
    "GcoreGpuImageDiscoveryFailing",
    "GcoreGpuImageExporterDown",
    "GcoreGpuImageExporterReplicaDown",
    "GcoreGpuImageExporterShardDown",
    "GcoreGpuImageApiUnauthorized",
    "GcoreGpuImageApiRateLimited",
    "GcoreGpuImageTaskSuccessRatioLow",
    "GcoreGpuImageTaskDurationHigh",
    "GcoreGpuClusterImageNotActive",
}
LOCKED = "GcoreGpuImageLockedTooLong"
NOT_ACTIVE = "GcoreGpuImageNotActive"
DISCOVERY = "GcoreGpuImageDiscoveryFailing"
SELECTOR = 'job="gcore-gpu-image-exporter"'
RANGE = re.compile(r"\[([0-9a-z]+)\]")
# A metric selected in an expression: its name and the matchers in braces.
SELECTION = re.compile(r"\b(gcore_\w+|up)\{([^}]*)\}")


@pytest.fixture(scope="module")
def render_rules() -> ModuleType:
    return load_render_rules()


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


def _rules(text: str) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def _run_renderer(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(RENDERER), *args], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_rules_yaml_is_the_default_rendering(render_rules: ModuleType) -> None:
    assert RULES.read_text(encoding="utf-8") == render_rules.render()
    assert _run_renderer() == render_rules.render()


def test_the_renderer_needs_only_pyyaml(tmp_path: Path) -> None:
    """Without site-packages (-S) and with a copy of PyYAML alone on the path, as docs/deploy.md
    promises: the thresholds come from exporter/alerting.py, which the script finds itself."""
    shutil.copytree(Path(yaml.__file__).parent, tmp_path / "yaml")
    result = subprocess.run(
        [sys.executable, "-S", str(RENDERER)],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == RULES.read_text(encoding="utf-8")


def _escalated(rule: dict[str, Any]) -> bool:
    """Whether `rule` is the critical copy of a rule, for images that GPU clusters boot from."""
    return "\nand on (" in rule["expr"] and "(gcore_gpu_image_clusters{" in rule["expr"]


def _rule(rules: list[dict[str, Any]], name: str, severity: str) -> dict[str, Any]:
    """The rule of `name` at `severity` (for an image that no GPU cluster boots from)."""
    (found,) = [
        r
        for r in rules
        if r["alert"] == name and r["labels"]["severity"] == severity and not _escalated(r)
    ]
    return found


def test_image_alerts_are_critical_when_clusters_boot_from_the_image(
    render_rules: ModuleType,
) -> None:
    """Each escalated rule is its plain rule for images no cluster boots from, and a critical
    copy with the same `for` for images that clusters boot from."""
    used = 'max without (instance, pod, node) (gcore_gpu_image_clusters{job="x"}) > 0'
    rules = _rules(render_rules.render(job="x"))
    escalated = [r for r in rules if _escalated(r)]
    assert {r["alert"] for r in escalated} == {NOT_ACTIVE, LOCKED}
    for copy in escalated:
        plain_expr = copy["expr"].removesuffix(
            f"\nand on (project_id, region_id, image_id)\n{used}"
        )
        (plain,) = [
            r
            for r in rules
            if r["expr"] == f"{plain_expr}\nunless on (project_id, region_id, image_id)\n{used}"
        ]
        assert copy["labels"]["severity"] == "critical" != plain["labels"]["severity"]
        assert copy["for"] == plain["for"]
        assert copy["annotations"] == plain["annotations"]


def test_status_groups_split_the_known_statuses(render_rules: ModuleType) -> None:
    """Active, transitional and failed cover every known status once; the critical NotActive
    rule catches every status but active and the transitional ones (unknown ones too)."""
    groups = [("active",), TRANSITIONAL_STATUSES, FAILED_STATUSES]
    assert sorted(status for group in groups for status in group) == sorted(KNOWN_STATUSES)
    rules = _rules(render_rules.render())
    critical = _rule(rules, "GcoreGpuImageNotActive", "critical")
    warning = _rule(rules, "GcoreGpuImageNotActive", "warning")
    assert f'status!~"{"|".join(("active", *TRANSITIONAL_STATUSES))}"}}' in critical["expr"]
    assert f'status=~"{"|".join(TRANSITIONAL_STATUSES)}"}}' in warning["expr"]


def test_prometheus_rule_carries_the_same_groups(render_rules: ModuleType) -> None:
    text = PROMETHEUS_RULE.read_text(encoding="utf-8")
    assert text == render_rules.render_prometheus_rule()
    assert text == _run_renderer("--format", "prometheusrule")
    resource = yaml.safe_load(text)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def test_every_alert_is_named_annotated_and_has_a_runbook_section() -> None:
    rules = _rules(RULES.read_text(encoding="utf-8"))
    assert {rule["alert"] for rule in rules} == ALERTS
    anchors = {
        line.removeprefix("## ").strip().lower()
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        assert "{{" not in annotations["summary"], (
            "summaries are static text, kubernetes-mixin style"
        )
        assert rule.get("for"), f"{rule['alert']}: every rule waits before it fires"
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page.endswith("/docs/runbook.md")
        assert anchor == rule["alert"].lower()
        assert anchor in anchors


def test_every_alert_and_threshold_is_documented(render_rules: ModuleType) -> None:
    """docs/deploy.md's tables list every alert and every threshold with its default; the README
    names every alert."""
    deploy = DEPLOY.read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ALERTS:
        assert f"| `{name}` |" in deploy, name
        assert f"`{name}`" in readme, name
    for name, default in render_rules.DEFAULTS.items():
        assert f"| `{name}` | `{default}` |" in deploy, name


def test_every_alert_says_in_words_when_it_fires(render_rules: ModuleType) -> None:
    """docs/deploy.md's alert table is made from these (docs/generate.py); a new alert without
    them would leave a blank row."""
    for alert in render_rules.ALERTS:
        assert alert.fires_when.strip(), f"{alert.name} ({alert.severity}) has no fires_when"


def test_the_knob_shortens_every_threshold(render_rules: ModuleType) -> None:
    fast = render_rules.scaled(1 / 60)
    assert fast["transitional_for"] == "1m"
    assert fast["lock_age"] == "30s"
    assert fast["task_success_ratio"] == "0.9"  # numbers are no durations: they stay
    assert fast["task_slo_min_tasks"] == "5"
    for rule in _rules(render_rules.render(fast)):
        durations = [*RANGE.findall(rule["expr"]), rule.get("for", "0s")]
        # the longest default, task_slo_window's 6h, becomes 6m
        assert all(render_rules.parse_duration(d) <= 360 for d in durations), rule
    lock = _rule(_rules(render_rules.render({"lock_age": "90s"})), LOCKED, "warning")
    assert "(gcore_gpu_image_lock_age_seconds{" + SELECTOR + "}) > 90\nunless on (" in lock["expr"]
    assert "(threshold 1m30s)" in lock["annotations"]["description"]


def test_the_cli_applies_scale_then_set() -> None:
    text = _run_renderer("--scale", "0.01", "--set", "failed_for=2s", "--job", "exp")
    fors = {
        (r["alert"], r["labels"]["severity"]): r["for"] for r in _rules(text) if not _escalated(r)
    }
    assert fors == {
        ("GcoreGpuImageNotActive", "critical"): "2s",
        ("GcoreGpuImageNotActive", "warning"): "3s",
        (LOCKED, "warning"): "3s",
        (LOCKED, "critical"): "3s",
        ("GcoreGpuImageLockStuck", "warning"): "3s",
        ("GcoreGpuImageTaskFailed", "warning"): "600ms",
        ("GcoreGpuImageMissing", "critical"): "600ms",
        ("GcoreGpuImageFetchFailing", "warning"): "9s",
        ("GcoreGpuImageDiscoveryFailing", "warning"): "9s",
        ("GcoreGpuImageDiscoveryFailing", "critical"): "9s",
        ("GcoreGpuImageExporterDown", "warning"): "3s",
        ("GcoreGpuImageExporterReplicaDown", "info"): "3s",
        ("GcoreGpuImageExporterShardDown", "warning"): "3s",
        ("GcoreGpuImageApiUnauthorized", "critical"): "9s",
        ("GcoreGpuImageApiRateLimited", "warning"): "9s",
        ("GcoreGpuImageTaskSuccessRatioLow", "warning"): "9s",
        ("GcoreGpuImageTaskDurationHigh", "warning"): "9s",
        ("GcoreGpuClusterImageNotActive", "critical"): "2s",
    }
    down = _rule(_rules(text), "GcoreGpuImageExporterDown", "warning")
    assert down["expr"] == (
        'max without (instance, pod, node) (up{job="exp"}) == 0\nor\nabsent(up{job="exp"})'
    )


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"lock_timeout": "1m"}, "unknown threshold"),
        ({"lock_age": "30 minutes"}, "not a Prometheus duration"),
        ({"api_error_window": "0s"}, "must be longer than 0s"),
        ({"task_success_ratio": "90%"}, "is not a number"),
        ({"task_success_ratio": "1.5"}, "is not a ratio"),
        ({"task_slo_min_tasks": "2.5"}, "is not a whole number"),
        ({"task_slo_min_tasks": "0"}, "is not a whole number"),
    ],
)
def test_bad_thresholds_are_rejected(
    render_rules: ModuleType, thresholds: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render_rules.render(thresholds)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"selector": "job=gcore"}, "is not label matchers"),
        ({"selector": ""}, "is not label matchers"),
        ({"selector": 'job="a`b"'}, "may not contain"),
        ({"cluster_label": "project_id"}, "not a free Prometheus label name"),
        ({"cluster_label": "k8s-cluster"}, "not a free Prometheus label name"),
        ({"replica_labels": ()}, "replica labels must be given"),
        ({"replica_labels": ("pod",), "cluster_label": "pod"}, "differ from the cluster label"),
    ],
)
def test_bad_selector_and_labels_are_rejected(
    render_rules: ModuleType, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render_rules.render(**options)
    if "selector" in options:
        result = subprocess.run(
            [sys.executable, str(RENDERER), "--selector", options["selector"]],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert message in result.stderr


def test_every_selection_carries_the_selector(render_rules: ModuleType) -> None:
    """A selector of one's own reaches every metric the rules and their annotations query, and
    every aggregation keeps the cluster label: `max without` keeps it, `on (...)` names it."""
    selector = 'job="gpu-images",namespace=~"mon.*"'
    text = render_rules.render(selector=selector, cluster_label="k8s_cluster")
    for rule in _rules(text):
        selections = SELECTION.findall(rule["expr"])
        assert selections, rule["alert"]
        assert all(matchers.startswith(selector) for _, matchers in selections), rule["expr"]
        for scope in re.findall(r"\bon \(([^)]*)\)", rule["expr"]):
            assert scope.startswith("k8s_cluster, "), rule["expr"]
        assert " by (" not in rule["expr"].replace("group by (k8s_cluster, ", "")
        description = rule["annotations"]["description"]
        if "$sel" in description:
            assert f"`{selector},k8s_cluster=%q,project_id=%q" in description
            assert "$labels.k8s_cluster $labels.project_id" in description
        if "$labels.project_id" in description:
            assert "of cluster {{ $labels.k8s_cluster }}" in description
    assert SELECTOR not in text


def test_replica_labels_can_be_named() -> None:
    text = _run_renderer("--replica-labels", "instance,kubernetes_pod_name")
    assert "max without (instance, kubernetes_pod_name) (" in text
    assert "without (instance, pod, node)" not in text


def test_a_cluster_label_keeps_clusters_apart(
    render_rules: ModuleType, promtool: str, tmp_path: Path
) -> None:
    """Two clusters with two replicas each: one alert per cluster, and each cluster's listing
    is critical or not by that cluster's image series alone."""
    (tmp_path / "rules.yaml").write_text(
        render_rules.render(cluster_label="cluster"), encoding="utf-8"
    )

    def series(metric: str, labels: str, values: str) -> list[dict[str, str]]:
        return [
            {
                "series": f'{metric}{{{labels},cluster="{cluster}",instance="{instance}",'
                f'job="{render_rules.DEFAULT_JOB}"}}',
                "values": values,
            }
            for cluster in ("eu", "us")
            for instance in ("a:10150", "b:10150")
        ]

    scope = 'project_id="361",region_id="76"'
    image = f'{scope},image_id="img-1"'
    listing = f'{scope},kind="virtual",endpoint="images"'
    inputs = [
        *series("gcore_gpu_image_status", f'{image},status="killed"', "1x10"),
        *series("gcore_exporter_discovery_up", listing, "0x20"),
        # the project has a name in one cluster only: each description looks in its own
        *[
            s
            for s in series("gcore_gpu_project_info", 'project_id="361",project_name="ml"', "1x20")
            if 'cluster="eu"' in s["series"]
        ],
        *[s for s in series("gcore_gpu_image_up", image, "1x20") if 'cluster="eu"' in s["series"]],
    ]

    where = {"eu": 'project "ml" (361), region 76 of cluster eu', "us": "project 361, region 76"}
    where["us"] += " of cluster us"
    failed = "Listing the virtual GPU images in {w} has failed for more than 15m on every replica"
    failed += " of the exporter"
    descriptions = {
        (NOT_ACTIVE, "critical"): "GPU image img-1 in {w} has been in the failed status"
        ' "killed" for more than 5m; no instance can be created from it.',
        (DISCOVERY, "warning"): f"{failed}: images added there are not seen, and those already"
        " known are fetched from the listing, so they fail too.",
        (DISCOVERY, "critical"): f"{failed}, which has no image of it: nothing there is watched,"
        " so no other GPU image alert can fire for it.",
    }
    rules = _rules(render_rules.render())

    def expected(name: str, cluster: str, severity: str, **labels: str) -> dict[str, Any]:
        annotations = _rule(rules, name, severity)["annotations"]
        description = descriptions[(name, severity)]
        return {
            "exp_labels": {
                "severity": severity,
                "cluster": cluster,
                "job": render_rules.DEFAULT_JOB,
                "project_id": "361",
                "region_id": "76",
                **labels,
            },
            "exp_annotations": {
                "summary": annotations["summary"],
                "description": description.format(w=where[cluster]),
                "runbook_url": annotations["runbook_url"],
            },
        }

    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "GcoreGpuImageNotActive",
                        "exp_alerts": [
                            expected(NOT_ACTIVE, c, "critical", image_id="img-1", status="killed")
                            for c in ("eu", "us")
                        ],
                    },
                    {
                        "eval_time": "16m",
                        "alertname": "GcoreGpuImageDiscoveryFailing",
                        "exp_alerts": [
                            expected(DISCOVERY, c, s, kind="virtual", endpoint="images")
                            for c, s in (("eu", "warning"), ("us", "critical"))
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests_pass(promtool: str, path: Path) -> None:
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["rule_files"] == [
        "../../deploy/prometheus/rules.yaml"
    ]
    result = subprocess.run(
        [promtool, "test", "rules", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_prove_replicas_page_once() -> None:
    """Every rule but ReplicaDown (one alert per down replica) has a unit test with two values
    of `instance` in its input and an expected alert without one: N replicas, one alert."""
    rules = _rules(RULES.read_text(encoding="utf-8"))
    proven: set[tuple[str, str]] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            instances = {
                match
                for item in case["input_series"]
                for match in re.findall(r'instance="([^"]+)"', item["series"])
            }
            if len(instances) < 2:
                continue
            for check in case["alert_rule_test"]:
                for alert in check.get("exp_alerts") or []:
                    if "instance" not in alert["exp_labels"]:
                        proven.add((check["alertname"], alert["exp_labels"]["severity"]))
    wanted = {
        (rule["alert"], rule["labels"]["severity"])
        for rule in rules
        if rule["alert"] != "GcoreGpuImageExporterReplicaDown"
    }
    assert wanted <= proven, f"no two-replica case for {sorted(wanted - proven)}"


def test_unit_tests_prove_every_rule_fires_and_stays_silent() -> None:
    rules = _rules(RULES.read_text(encoding="utf-8"))
    fired: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case["alert_rule_test"]:
                expected = check.get("exp_alerts") or []
                if not expected:
                    silent.add(check["alertname"])
                for alert in expected:
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }
                    fired.add((check["alertname"], alert["exp_labels"]["severity"]))
    assert fired == {(rule["alert"], rule["labels"]["severity"]) for rule in rules}
    assert silent == ALERTS
