"""Kubernetes manifests (kustomize) and the plain Prometheus example agree with the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from support.tooling import ROOT, Objects, kustomize, load_render_rules, one, require_tool

from exporter.config.settings import DEFAULT_PORT

DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
IMAGE = f"ghcr.io/gcore-gpu-image-exporter/gcore-gpu-image-exporter:{VERSION}"
SECRET_EXAMPLE = DEPLOY / "secret.example.yaml"
CORE = ["ServiceAccount", "ConfigMap", "Service", "Deployment", "NetworkPolicy"]
OVERLAYS = {"base": CORE, "prometheus-operator": [*CORE, "ServiceMonitor", "PrometheusRule"]}
CUSTOM = {"ServiceMonitor", "PrometheusRule"}
JOB = load_render_rules().DEFAULT_JOB


@pytest.fixture(scope="module")
def rendered() -> dict[str, Objects]:
    return {name: kustomize(DEPLOY / name) for name in OVERLAYS}


def _container(objects: Objects) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_every_overlay_renders_its_objects_without_namespace_or_secret(
    rendered: dict[str, Objects],
) -> None:
    for name, kinds in OVERLAYS.items():
        objects = rendered[name]
        assert sorted(o["kind"] for o in objects) == sorted(kinds), name
        assert all("namespace" not in o["metadata"] for o in objects)
    for path in DEPLOY.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert SECRET_EXAMPLE.name not in str(kustomization.get("resources", [])), path


@pytest.mark.parametrize("k8s_version", ["1.27", latest_version()])
def test_core_objects_validate_against_the_kubernetes_schemas(
    rendered: dict[str, Objects], k8s_version: str
) -> None:
    objects = [*rendered["prometheus-operator"], *yaml.safe_load_all(SECRET_EXAMPLE.read_text())]
    for obj in objects:
        if obj["kind"] not in CUSTOM:
            kubernetes_validate.validate(obj, k8s_version, strict=True)


def test_service_monitor_scrapes_the_service_as_the_rules_expect(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["prometheus-operator"]
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == JOB  # the job label the alert rules match
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert all(re.fullmatch(r"\d+[smh]", endpoint[k]) for k in ("interval", "scrapeTimeout"))


def test_prometheus_rule_is_well_formed(rendered: dict[str, Objects]) -> None:
    rule = one(rendered["prometheus-operator"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert list(rule["spec"]) == ["groups"]
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for item in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(item)
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}
            assert all(isinstance(v, str) for v in [*item["labels"].values()])


def test_deployment_agrees_with_the_image_and_the_code(rendered: dict[str, Objects]) -> None:
    objects = rendered["base"]
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(objects)
    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == IMAGE
    assert container["ports"] == [
        {"name": "metrics", "containerPort": DEFAULT_PORT, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": int(user[1]),
        "runAsGroup": int(user[2]),
        "fsGroup": int(user[2]),
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    account = one(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    assert account["automountServiceAccountToken"] is False


def test_service_and_network_policy_open_only_the_metrics_port(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["base"]
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": DEFAULT_PORT, "targetPort": "metrics", "protocol": "TCP"}
    ]
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert all(set(rule) == {"ports"} for rule in policy["egress"])
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def _mounted(objects: Objects, path: str) -> tuple[dict[str, Any], str]:
    """The pod volume that holds the file `path` in the container, and the file's name in it."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    directory, _, filename = path.rpartition("/")
    (mount,) = [m for m in _container(objects)["volumeMounts"] if m["mountPath"] == directory]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume, filename


def test_config_and_secret_reach_the_exporter(rendered: dict[str, Objects], tmp_path: Path) -> None:
    """Runs `--check-config` with the Deployment's environment and its mounted files."""
    objects = rendered["base"]
    env = {e["name"]: e["value"] for e in _container(objects)["env"]}
    assert env["GCORE_EXPORTER_LOG_FORMAT"] == "json"
    config_volume, config_file = _mounted(objects, env["GCORE_EXPORTER_CONFIG"])
    config_map = one(objects, "ConfigMap")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    secret_volume, key_file = _mounted(objects, env["GCORE_API_KEY_FILE"])
    example = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    assert secret_volume["secret"]["secretName"] == example["metadata"]["name"]
    (item,) = secret_volume["secret"]["items"]
    assert item == {"key": next(iter(example["stringData"])), "path": key_file}

    (tmp_path / config_file).write_text(config_map["data"][config_file], encoding="utf-8")
    (tmp_path / key_file).write_text("fake-key-7c41d2\n", encoding="utf-8")
    env["GCORE_EXPORTER_CONFIG"] = str(tmp_path / config_file)
    env["GCORE_API_KEY_FILE"] = str(tmp_path / key_file)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config"],
        env={"PATH": os.environ["PATH"], **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "fake-key-7c41d2" not in result.stdout + result.stderr
    settings = json.loads(result.stdout)
    config = yaml.safe_load(config_map["data"][config_file])
    assert sorted(settings["targets"]) == sorted(config["targets"])
    assert settings["interval"] == 60
    assert settings["log_format"] == "json"
    (listen,) = settings["listen"]
    assert listen.endswith(f":{DEFAULT_PORT}")


def _documented_overlay(tmp_path: Path) -> Path:
    """The files of docs/deploy.md's "Your own overlay", written as the text shows them, in a
    folder beside deploy/ (their `../deploy/...` paths resolve as the text says)."""
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n# my-exporter/(\S+)\n(.*?)```", docs, re.S)
    assert {name for name, _ in blocks} == {"kustomization.yaml", "config.yaml"}
    root = tmp_path / "repo"
    root.mkdir()
    (root / "deploy").symlink_to(DEPLOY, target_is_directory=True)
    overlay = root / "my-exporter"
    overlay.mkdir()
    for name, text in blocks:
        (overlay / name).write_text(text, encoding="utf-8")
    return overlay


def test_documented_overlay_sets_namespace_release_config_and_image(
    tmp_path: Path,
) -> None:
    """The own-overlay recipe of docs/deploy.md as written: namespace, config, the release label
    of a kube-prometheus-stack installed as `monitoring`, one's own registry, two replicas."""
    overlay = _documented_overlay(tmp_path)
    objects = kustomize(overlay)
    assert {o["metadata"]["namespace"] for o in objects} == {"monitoring"}
    for kind in CUSTOM:
        assert one(objects, kind)["metadata"]["labels"]["release"] == "monitoring"
    config_map = one(objects, "ConfigMap")
    config = (overlay / "config.yaml").read_text(encoding="utf-8")
    assert config_map["data"] == {"config.yaml": config}
    volume, _ = _mounted(objects, "/etc/gcore-gpu-image-exporter/config/config.yaml")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert _container(objects)["image"] == (
        f"registry.example.com/mirror/gcore-gpu-image-exporter:{VERSION}"
    )
    assert one(objects, "Deployment")["spec"]["replicas"] == 2


def test_documented_prometheus_rule_patch_replaces_the_groups(tmp_path: Path) -> None:
    """docs/deploy.md: a PrometheusRule rendered with other thresholds, added to the overlay's
    `patches`, replaces the groups of the inherited one."""
    overlay = _documented_overlay(tmp_path)
    rendered = load_render_rules().render_prometheus_rule({"lock_age": "45m"})
    (overlay / "prometheusrule.yaml").write_text(rendered, encoding="utf-8")
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
    kustomization["patches"].append({"path": "prometheusrule.yaml"})
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    rule = one(kustomize(overlay), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(rendered)["spec"]["groups"]
    assert rule["metadata"]["labels"]["release"] == "monitoring"


def test_plain_prometheus_example_scrapes_the_exporter_with_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules.yaml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    (static,) = job["static_configs"]
    assert all(target.endswith(f":{DEFAULT_PORT}") for target in static["targets"])
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
