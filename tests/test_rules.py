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
from tooling import ROOT, load_render_rules, require_tool

from exporter.alerting import FAILED_STATUSES, KNOWN_STATUSES, TRANSITIONAL_STATUSES

RENDERER = ROOT / "deploy" / "prometheus" / "render_rules.py"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus-operator" / "prometheusrule.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yaml"))
ALERTS = {
    "GcoreGpuImageNotActive",
    "GcoreGpuImageLockedTooLong",
    "GcoreGpuImageMissing",
    "GcoreGpuImageFetchFailing",
    "GcoreGpuImageExporterDown",
    "GcoreGpuImageApiUnauthorized",
    "GcoreGpuImageApiRateLimited",
}
RANGE = re.compile(r"\[([0-9a-z]+)\]")


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


def test_status_groups_split_the_known_statuses(render_rules: ModuleType) -> None:
    """Active, transitional and failed cover every known status once; the critical NotActive
    rule catches every status but active and the transitional ones (unknown ones too)."""
    groups = [("active",), TRANSITIONAL_STATUSES, FAILED_STATUSES]
    assert sorted(status for group in groups for status in group) == sorted(KNOWN_STATUSES)
    critical, warning = _rules(render_rules.render())[:2]
    assert critical["expr"] == (
        f'gcore_gpu_image_status{{status!~"{"|".join(("active", *TRANSITIONAL_STATUSES))}"}} == 1'
    )
    assert warning["expr"] == (
        f'gcore_gpu_image_status{{status=~"{"|".join(TRANSITIONAL_STATUSES)}"}} == 1'
    )


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
        assert rule["labels"]["severity"] in ("warning", "critical")
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page.endswith("/docs/runbook.md")
        assert anchor == rule["alert"].lower()
        assert anchor in anchors


def test_the_knob_shortens_every_threshold(render_rules: ModuleType) -> None:
    fast = render_rules.scaled(1 / 60)
    assert fast["transitional_for"] == "1m"
    assert fast["lock_age"] == "30s"
    for rule in _rules(render_rules.render(fast)):
        durations = [*RANGE.findall(rule["expr"]), rule.get("for", "0s")]
        assert all(render_rules.parse_duration(d) <= 60 for d in durations), rule
    lock = _rules(render_rules.render({"lock_age": "90s"}))[2]
    assert lock["expr"] == "gcore_gpu_image_lock_age_seconds > 90"
    assert "(threshold 1m30s)" in lock["annotations"]["description"]


def test_the_cli_applies_scale_then_set() -> None:
    text = _run_renderer("--scale", "0.01", "--set", "failed_for=2s", "--job", "exp")
    rules = _rules(text)
    assert [rule.get("for") for rule in rules] == [
        "2s",
        "36s",
        None,
        "3s",
        "600ms",
        "9s",
        "3s",
        "9s",
        "9s",
    ]
    assert 'up{job="exp"} == 0 or absent(up{job="exp"})' in text


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"lock_timeout": "1m"}, "unknown threshold"),
        ({"lock_age": "30 minutes"}, "not a Prometheus duration"),
        ({"api_error_window": "0s"}, "must be longer than 0s"),
    ],
)
def test_bad_thresholds_are_rejected(
    render_rules: ModuleType, thresholds: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render_rules.render(thresholds)


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
