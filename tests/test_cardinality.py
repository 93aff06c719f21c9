"""Cardinality controls: `--metric-allowlist`/`--metric-denylist` over family names (whole names, as
kube-state-metrics) and `--tag-keys` for `gcore_gpu_image_tag_info`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.clock import NOW
from support.exporter import ExporterFactory
from support.exposition import parse_samples, series
from support.tooling import ROOT

from exporter.config.settings import ConfigError, load_settings
from exporter.demo.fake_gcore import FakeGcore, make_image, make_task
from exporter.gcore.models import Image
from exporter.metrics.cluster_families import ClusterCounts
from exporter.metrics.families import FAMILIES, VALUE_FAMILIES
from exporter.metrics.image_store import ImageStore
from exporter.metrics.selection import Selection
from exporter.vocabulary import ImageKey, Scope

P, R = 3, 5
IMG = "c0ffee00-0000-4000-8000-0000000000c1"
TAGS = [
    {"key": "team", "value": "ml", "read_only": False},
    {"key": "env", "value": "prod", "read_only": False},
    {"key": "ticket-url", "value": "https://jira.example/ML-4711", "read_only": True},
]


@pytest.fixture(autouse=True)
def _account(fake: FakeGcore) -> None:
    fake.put_image(P, R, make_image(IMG, "tagged", tags=TAGS))
    finished = datetime.fromtimestamp(NOW - 600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fake.put_task(
        make_task(
            "t-1",
            "ERROR",
            "download_image",
            project_id=P,
            region_id=R,
            created_on=finished,
            finished_on=finished,
            error="download failed",
        )
    )


async def families_of(running_scrape: str) -> set[str]:
    """Every family with a HELP line: a family left out must not even leave its header."""
    return {line.split()[2] for line in running_scrape.splitlines() if line.startswith("# HELP")}


async def test_a_denied_family_leaves_no_series_and_no_header(exporter: ExporterFactory) -> None:
    deny = "gcore_gpu_image_tag_info,gcore_gpu_image_(size|min_disk)_bytes,.*_task_failed_info"
    async with exporter(targets=[f"{P}/{R}"], metric_denylist=deny) as running:
        assert await running.poll_tasks()
        text = await running.scrape()
    shown = await families_of(text)
    gone = {
        "gcore_gpu_image_tag_info",
        "gcore_gpu_image_size_bytes",
        "gcore_gpu_image_min_disk_bytes",
        "gcore_gpu_image_task_failed_info",
    }
    assert not gone & shown
    assert not any(name in text for name in gone)
    kept = {"gcore_gpu_image_info", "gcore_gpu_image_min_ram_bytes", "gcore_gpu_image_up"}
    assert kept | {"gcore_gpu_image_task_failed_timestamp_seconds"} <= shown
    assert series(parse_samples(text), "gcore_gpu_image_up") != []


async def test_the_allowlist_keeps_only_whole_name_matches_and_the_exporters_own(
    exporter: ExporterFactory,
) -> None:
    """`image_info` would find gcore_gpu_image_info if patterns were searched, not matched whole;
    the exporter's own families stay whatever the lists say."""
    allow = "gcore_gpu_image_up,image_info,gcore_gpu_image_fetch_errors_total"
    async with exporter(targets=[f"{P}/{R}"], metric_allowlist=allow) as running:
        assert await running.poll_tasks()
        shown = await families_of(await running.scrape())
    gpu = {name for name in shown if name.startswith("gcore_gpu_")}
    assert gpu == {"gcore_gpu_image_up", "gcore_gpu_image_fetch_errors_total"}
    assert "gcore_exporter_build_info" in shown


async def test_a_denylist_of_everything_leaves_the_exporters_own_families(
    exporter: ExporterFactory,
) -> None:
    async with exporter(targets=[f"{P}/{R}"], metric_denylist=".*") as running:
        assert await running.poll_tasks()
        shown = await families_of(await running.scrape())
    assert not any(name.startswith("gcore_gpu_") for name in shown)
    assert "gcore_exporter_build_info" in shown


async def test_tag_keys_keep_only_the_keys_given(exporter: ExporterFactory) -> None:
    async with exporter(targets=[f"{P}/{R}/{IMG}"], tag_keys="team, env") as running:
        samples = await running.samples()
    tags = {ls["key"]: ls["value"] for ls in series(samples, "gcore_gpu_image_tag_info")}
    assert tags == {"team": "ml", "env": "prod"}


async def test_every_tag_key_by_default(exporter: ExporterFactory) -> None:
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        samples = await running.samples()
    keys = {ls["key"] for ls in series(samples, "gcore_gpu_image_tag_info")}
    assert keys == {"team", "env", "ticket-url"}


def test_a_denied_family_takes_no_bytes_in_the_store() -> None:
    """Its lines are never built: blocks hold nothing of it; the other families are as without a
    list."""
    denied = {
        "gcore_gpu_image_info",
        "gcore_gpu_image_tag_info",
        "gcore_gpu_image_up",
        "gcore_gpu_image_clusters",
    }
    clock = lambda: NOW  # noqa: E731
    selected = ImageStore(stale_after=300, clock=clock, shown=Selection(deny=tuple(denied)).shown())
    full = ImageStore(stale_after=300, clock=clock)
    scope = Scope(P, R)
    for n in range(3):
        image = Image.model_validate(make_image(f"{IMG[:-2]}{n:02d}", "x", tags=TAGS))
        for store in (selected, full):
            store.succeeded(ImageKey(scope, image.id), image, None)
    for store in (selected, full):
        store.count_clusters(ClusterCounts(frozenset({scope})))  # each image used by none: 0
    (block,), (whole,) = selected.rendered(), full.rendered()
    for index, family in enumerate(FAMILIES):
        if family.name in denied:
            assert (block[index], whole[index] != b"") == (b"", True), family.name
        else:
            assert block[index] == whole[index], family.name
    state = selected.get(ImageKey(scope, f"{IMG[:-2]}00"))
    assert state is not None
    names = [family.name for family in VALUE_FAMILIES]
    assert state.values[names.index("gcore_gpu_image_info")] == b""


def test_allowlist_and_denylist_are_mutually_exclusive() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(demo=True, metric_allowlist="gcore_gpu_image_up", metric_denylist="x")
    assert refused.value.problems == [
        "metric_allowlist and metric_denylist are mutually exclusive: give one"
    ]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"metric_denylist": "gcore_gpu_(image"}, "metric_denylist: 'gcore_gpu_(image' is not a"),
        ({"metric_allowlist": "ok,[z-a]"}, "metric_allowlist: '[z-a]' is not a regular"),
        ({"tag_keys": " , "}, "tag_keys: no tag key given"),
    ],
)
def test_bad_cardinality_settings_are_one_line_each(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(demo=True, **options)
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].startswith(problem)


def test_environment_takes_commas_and_yaml_takes_a_list_whose_regexes_may_hold_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_EXPORTER_TAG_KEYS", "team,env")
    config = tmp_path / "config.yaml"
    config.write_text("metric_denylist:\n  - gcore_gpu_image_(a){1,2}\n  - gcore_gpu_image_info\n")
    settings = load_settings(demo=True, config=str(config))
    assert settings.tag_keys == ("team", "env")
    assert settings.metric_denylist == ("gcore_gpu_image_(a){1,2}", "gcore_gpu_image_info")


def test_the_documented_denylist_leaves_out_no_family_an_alert_reads() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    (patterns,) = re.findall(r"--metric-denylist '([^']+)'", docs)
    selection = Selection(deny=tuple(patterns.split(",")))
    denied = [family.name for family in FAMILIES if not selection.exports(family.name)]
    assert len(denied) >= 4
    rules = (ROOT / "deploy" / "prometheus" / "rules.yaml").read_text(encoding="utf-8")
    read = set(re.findall(r"\b(gcore_gpu_\w+)", rules))
    assert not read & set(denied)
