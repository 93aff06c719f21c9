"""deploy/sharded, as rendered: a StatefulSet of shards, every pod scraped, each its own shard."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from support.tooling import ROOT, Objects, kustomize, one

DEPLOY = ROOT / "deploy"
CUSTOM = {"ServiceMonitor", "PrometheusRule"}


def pod_container(workload: dict[str, Any]) -> dict[str, Any]:
    (found,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(found)


def pod_env(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_container(workload)["env"])


@pytest.fixture(scope="module")
def sharded() -> Objects:
    return kustomize(DEPLOY / "sharded")


@pytest.fixture(scope="module")
def operator() -> Objects:
    return kustomize(DEPLOY / "prometheus-operator")


def test_sharded_overlay_replaces_the_deployment_with_a_statefulset(
    sharded: Objects, operator: Objects
) -> None:
    kinds = sorted(o["kind"] for o in sharded)
    expected = sorted(
        "StatefulSet" if k == "Deployment" else k for k in (o["kind"] for o in operator)
    )
    assert kinds == expected
    assert all("namespace" not in o["metadata"] for o in sharded)


@pytest.mark.parametrize("k8s_version", ["1.27", latest_version()])
def test_sharded_objects_validate_against_the_kubernetes_schemas(
    sharded: Objects, k8s_version: str
) -> None:
    for obj in sharded:
        if obj["kind"] not in CUSTOM:
            kubernetes_validate.validate(obj, k8s_version, strict=True)


def test_replicas_are_the_total_shards_and_each_pod_knows_its_name(sharded: Objects) -> None:
    stateful_set = one(sharded, "StatefulSet")
    spec = stateful_set["spec"]
    env = {e["name"]: e for e in pod_env(stateful_set)}
    assert spec["replicas"] == 3
    assert int(env["GCORE_EXPORTER_TOTAL_SHARDS"]["value"]) == spec["replicas"]
    assert env["POD_NAME"] == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert "GCORE_EXPORTER_SHARD" not in env  # the shard comes from the pod's ordinal
    assert spec["podManagementPolicy"] == "Parallel"


def test_pod_template_is_the_base_deployments_plus_the_shard_env(
    sharded: Objects, operator: Objects
) -> None:
    """Security contexts, probes, resources, volumes and mounts: nothing drifts from the base."""
    deployment, stateful_set = one(operator, "Deployment"), one(sharded, "StatefulSet")
    base, stateful = deployment["spec"]["template"], stateful_set["spec"]["template"]
    assert stateful["metadata"] == base["metadata"]
    assert {k: v for k, v in stateful["spec"].items() if k != "containers"} == {
        k: v for k, v in base["spec"].items() if k != "containers"
    }
    ours, theirs = pod_container(stateful_set), pod_container(deployment)
    shard_env = {"POD_NAME", "GCORE_EXPORTER_TOTAL_SHARDS"}
    assert [e for e in ours.pop("env") if e["name"] not in shard_env] == theirs.pop("env")
    assert ours == theirs


def test_headless_service_selects_every_shard_and_the_monitor_selects_it(
    sharded: Objects,
) -> None:
    stateful_set, service = one(sharded, "StatefulSet"), one(sharded, "Service")
    monitor = one(sharded, "ServiceMonitor")
    pod_labels = stateful_set["spec"]["template"]["metadata"]["labels"]
    assert stateful_set["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert stateful_set["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    policy = one(sharded, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()


def check_config(
    sharded: Objects, tmp_path: Path, pod_name: str
) -> subprocess.CompletedProcess[str]:
    """`--check-config` with the StatefulSet's environment, POD_NAME as the downward API sets it
    for `pod_name`, and the mounted config and key as files."""
    env = {e["name"]: e["value"] for e in pod_env(one(sharded, "StatefulSet")) if "value" in e}
    config_map = one(sharded, "ConfigMap")
    (config_file,) = config_map["data"]
    (tmp_path / config_file).write_text(config_map["data"][config_file], encoding="utf-8")
    (tmp_path / "api-key").write_text("fake-key-5e90a1\n", encoding="utf-8")
    env["GCORE_EXPORTER_CONFIG"] = str(tmp_path / config_file)
    env["GCORE_API_KEY_FILE"] = str(tmp_path / "api-key")
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config"],
        env={"PATH": os.environ["PATH"], **env, "POD_NAME": pod_name},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_third_pod_resolves_to_shard_two_of_three(sharded: Objects, tmp_path: Path) -> None:
    pod_name = f"{one(sharded, 'StatefulSet')['metadata']['name']}-2"
    assert pod_name == "gcore-gpu-image-exporter-2"
    result = check_config(sharded, tmp_path, pod_name)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert (settings["shard"], settings["total_shards"]) == (2, 3)
    assert "fake-key-5e90a1" not in result.stdout + result.stderr


def test_a_pod_beyond_the_total_shards_is_a_config_error(sharded: Objects, tmp_path: Path) -> None:
    """`replicas` raised without GCORE_EXPORTER_TOTAL_SHARDS: the fourth pod refuses to start
    rather than duplicate another shard's images."""
    result = check_config(sharded, tmp_path, "gcore-gpu-image-exporter-3")
    assert result.returncode == 2, result.stdout
    assert "POD_NAME" in result.stderr


def test_documented_change_of_n_keeps_replicas_and_total_shards_equal(tmp_path: Path) -> None:
    """docs/deploy.md's "Changing N" overlay, as written, beside deploy/: five pods, total 5."""
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    (text,) = re.findall(r"```yaml\n# my-shards/kustomization.yaml\n(.*?)```", docs, re.S)
    (tmp_path / "deploy").symlink_to(DEPLOY, target_is_directory=True)
    overlay = tmp_path / "my-shards"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(text, encoding="utf-8")
    stateful_set = one(kustomize(overlay), "StatefulSet")
    env = {e["name"]: e for e in pod_env(stateful_set)}
    assert stateful_set["spec"]["replicas"] == 5
    assert env["GCORE_EXPORTER_TOTAL_SHARDS"]["value"] == "5"
