"""The high-availability overlay, the scrape knobs and the release workflow, as rendered."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from support.tooling import ROOT, Objects, kustomize, one, require_tool

from exporter.config.settings import DEFAULT_PORT

DEPLOY = ROOT / "deploy"
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


@pytest.fixture(scope="module")
def ha() -> Objects:
    return kustomize(DEPLOY / "ha")


def test_ha_overlay_runs_two_spread_replicas_with_a_disruption_budget(ha: Objects) -> None:
    deployment = one(ha, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"] == pod_labels
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == pod_labels
    budget = one(ha, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"] == pod_labels
    assert {o["kind"] for o in ha} >= {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("k8s_version", ["1.27", latest_version()])
def test_ha_objects_validate_against_the_kubernetes_schemas(ha: Objects, k8s_version: str) -> None:
    for obj in ha:
        if obj["kind"] not in {"ServiceMonitor", "PrometheusRule"}:
            kubernetes_validate.validate(obj, k8s_version, strict=True)


def test_base_service_carries_the_scrape_annotations() -> None:
    service = one(kustomize(DEPLOY / "base"), "Service")
    assert service["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(DEFAULT_PORT),
        "prometheus.io/path": "/metrics",
    }


def test_operator_objects_carry_the_release_label_and_the_exporter_does_not() -> None:
    objects = kustomize(DEPLOY / "prometheus-operator")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "release" not in one(objects, "Deployment")["metadata"]["labels"]


def test_release_label_is_a_knob_an_overlay_can_turn(tmp_path: Path) -> None:
    """The docs/deploy.md recipe: a patch of one's own sets the Helm release name."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY / "prometheus-operator", tmp_path)],
                "patches": [
                    {
                        "target": {"group": "monitoring.coreos.com"},
                        "patch": '[{"op": "replace", "path": "/metadata/labels/release",'
                        ' "value": "monitoring"}]',
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    objects = kustomize(tmp_path)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["labels"]["release"] == "monitoring"


@pytest.fixture(scope="module")
def check_jsonschema() -> str:
    return require_tool("check-jsonschema", "pip install check-jsonschema")


def _validate_workflow(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_release_workflow_is_valid_and_builds_both_architectures_on_a_tag(
    check_jsonschema: str, tmp_path: Path
) -> None:
    result = _validate_workflow(check_jsonschema, WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads `on` as True
    steps = workflow["jobs"]["image"]["steps"]
    (build,) = [s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action")]
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True
    assert any("steps.build.outputs.digest" in str(s) for s in steps if s is not build)
    assert workflow["jobs"]["image"]["needs"] == "test"

    broken = tmp_path / "release.yml"  # the schema check is no formality: a job without runner
    del workflow["jobs"]["image"]["runs-on"]
    broken.write_text(yaml.safe_dump({"on": workflow.pop(True), **workflow}), encoding="utf-8")
    assert _validate_workflow(check_jsonschema, broken).returncode != 0


def test_grafana_overlay_is_the_dashboard_as_a_sidecar_configmap() -> None:
    """deploy/grafana: one ConfigMap that the Grafana sidecar of kube-prometheus-stack loads
    (label grafana_dashboard: "1"), holding exactly grafana/gcore-gpu-images.json, under a fixed
    name, and small enough for a client-side `kubectl apply` (its last-applied annotation)."""
    objects = kustomize(DEPLOY / "grafana")
    (config_map,) = objects
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["name"] == "gcore-gpu-image-exporter-dashboard"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (ROOT / "grafana" / "gcore-gpu-images.json").read_text(encoding="utf-8")
    assert config_map["data"] == {"gcore-gpu-images.json": dashboard}
    assert len(json.dumps(config_map)) < 262_144  # kubectl's limit on annotations
    for version in ("1.27", latest_version()):
        kubernetes_validate.validate(config_map, version, strict=True)
