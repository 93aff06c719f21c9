"""End to end: three exporter shards (as deploy/sharded runs them) -> one real Prometheus.

One fake API, explicit image ids and a listed project/region, every exporter given all of them and
`--shard I --total-shards 3`: Prometheus must see every image exactly once across the shards, on
the shard the jump hash names, and the alerts of a failed image and a missing one fire once each.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.sharding import shard_of

from .harness import API_KEY, JOB, Stack, running, wait_for

pytestmark = pytest.mark.slow  # runs Prometheus against three shards (about 10 s)

SHARDS = 3
PINNED = [f"pinned-{n}" for n in range(6)]  # explicit ids in 5/51, fetched one GET each
GONE = "gone"  # an explicit id the API answers 404 for
LISTED = [f"listed-{n}" for n in range(8)]  # everything of 5/50, discovered by listing
KILLED = "killed"  # listed, in a failed status
IMAGES = [*PINNED, GONE, *LISTED, KILLED]
EXPECTED_ALERTS = {("GcoreGpuImageNotActive", KILLED), ("GcoreGpuImageMissing", GONE)}
ALERT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def shards(
    tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str, rules: str
) -> Iterator[Stack]:
    fake = FakeGcore(api_key=API_KEY)
    for image_id in PINNED:
        fake.put_image(5, 51, make_image(image_id, f"ubuntu-{image_id}"))
    for image_id in LISTED:
        fake.put_image(5, 50, make_image(image_id, f"debian-{image_id}"))
    fake.put_image(5, 50, make_image(KILLED, "rocky-9-cuda-12.4", "killed"))
    root: Path = tmp_path_factory.mktemp("e2e-shards")
    stack = Stack(
        name="sharded",
        workdir=root / "sharded",
        fake=fake,
        targets=["5/50", *(f"5/51/{image_id}" for image_id in [*PINNED, GONE])],
        rules=rules,
        prometheus_binary=prometheus_binary,
        replicas=SHARDS,
        sharded=True,
    )
    try:
        with running([stack]):
            yield stack
    finally:
        shutil.rmtree(stack.workdir / "data", ignore_errors=True)


def test_the_images_cover_every_shard() -> None:
    """The scenario is no formality: pinned and listed images both land on every shard."""
    for group in (PINNED, LISTED):
        assert {shard_of(image_id, SHARDS) for image_id in group} == set(range(SHARDS)), group


def test_every_image_is_exported_once_by_its_shard_and_alerts_fire_once(shards: Stack) -> None:
    prom = shards.prom

    def firing() -> list[tuple[str, str]] | None:
        found = [(a["alertname"], a.get("image_id", "")) for a in prom.firing()]
        return found if set(found) >= EXPECTED_ALERTS else None

    alerts = wait_for("both alerts firing", firing, ALERT_TIMEOUT, details=shards.diagnostics)
    assert sorted(alerts) == sorted(EXPECTED_ALERTS), alerts  # each once, and nothing else

    up = f'gcore_gpu_image_up{{job="{JOB}"}}'
    assert not prom.query(f"count by (image_id) ({up}) > 1"), "an image on two shards"
    assert prom.scalar(f"count(count by (image_id) ({up}) == 1)") == len(IMAGES)
    assert prom.scalar(f"count({up})") == len(IMAGES)
    shard_of_instance = dict(zip(shards.exporter_instances, range(SHARDS), strict=True))
    seen = {
        row["metric"]["image_id"]: shard_of_instance[row["metric"]["instance"]]
        for row in prom.query(up)
    }
    assert seen == {image_id: shard_of(image_id, SHARDS) for image_id in IMAGES}
    ordinals = prom.query(f'gcore_exporter_shard_ordinal{{job="{JOB}"}}')
    assert {
        row["metric"]["instance"]: int(row["value"][1]) for row in ordinals
    } == shard_of_instance
    # At no time of the run did an alert fire from two shards, or a shard look down.
    twice = prom.query("max_over_time((count without (instance) (ALERTS) > 1)[5m:1s])")
    assert not twice, twice
    names = Counter(row["metric"]["alertname"] for row in prom.query("ALERTS"))
    assert "GcoreGpuImageExporterReplicaDown" not in names
    assert "GcoreGpuImageExporterDown" not in names
