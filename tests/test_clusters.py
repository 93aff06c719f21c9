"""GPU clusters: which clusters boot from each image, over loopback against the fake API."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from support.exporter import ExporterFactory
from support.exposition import series, value
from support.fake_api import API_KEY

from exporter.config.settings import load_settings
from exporter.daemon.lifecycle import POLLING
from exporter.demo.fake_clusters import make_baremetal_cluster, make_virtual_cluster
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.gcore.client import GcoreClient
from exporter.gcore.cluster_models import GpuCluster
from exporter.gcore.transport import Transport
from exporter.metrics.cluster_families import ClusterCounts, Listed, cluster_metrics
from exporter.metrics.telemetry import Telemetry
from exporter.sharding import shard_of
from exporter.vocabulary import ImageKey, Scope

A = "0a6c2f1e-5b7d-4e89-9c3a-1f2e3d4c5b6a"  # virtual, 1/10
B = "1b7d3a2f-6c8e-4f9a-8d4b-2a3f4e5d6c7b"  # bare metal, 1/20
C = "2c8e4b3a-7d9f-4a0b-9e5c-3b4a5f6e7d8c"  # virtual, 1/10, used by no cluster
GONE = "3d9f5c4b-8e0a-4b1c-8f6d-4c5b6a7f8e9d"  # a cluster's image that no longer exists
VC = "c1000000-0000-4000-8000-000000000001"
BC = "c2000000-0000-4000-8000-000000000002"
KC = "c3000000-0000-4000-8000-000000000003"
UC = "c4000000-0000-4000-8000-000000000004"  # names its image in upper case
GC = "c5000000-0000-4000-8000-000000000005"


@pytest.fixture
def account(fake: FakeGcore) -> FakeGcore:
    fake.put_image(1, 10, make_image(A, "train-image"))
    fake.put_image(1, 10, make_image(C, "unused-image"))
    fake.put_image(1, 20, make_image(B, "bm-image"), kind="baremetal")
    fake.clusters.put("virtual", 1, 10, make_virtual_cluster(VC, "train", A, servers=4))
    fake.clusters.put("baremetal", 1, 20, make_baremetal_cluster(BC, "bm-user", B, servers=2))
    return fake


LISTED = ["1/10", "baremetal:1/20"]


async def test_both_kinds_are_listed_with_the_image_each_boots_from(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        samples = await running.samples()
    info = series(samples, "gcore_gpu_cluster_info")
    assert sorted(info, key=lambda s: s["cluster_id"]) == [
        {
            "project_id": "1",
            "region_id": "10",
            "cluster_id": VC,
            "cluster_name": "train",
            "kind": "virtual",
            "status": "active",
            "image_id": A,  # the boot volume's, though a data volume is listed first
        },
        {
            "project_id": "1",
            "region_id": "20",
            "cluster_id": BC,
            "cluster_name": "bm-user",
            "kind": "baremetal",
            "status": "active",
            "image_id": B,
        },
    ]
    assert value(samples, "gcore_gpu_cluster_servers", cluster_id=VC) == 4
    assert value(samples, "gcore_gpu_image_clusters", image_id=A) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id=B) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id=C) == 0  # safe to delete
    up = {"endpoint": "clusters", "project_id": "1", "region_id": "20", "kind": "baremetal"}
    assert value(samples, "gcore_exporter_discovery_up", **up) == 1


async def test_clusters_managed_by_kubernetes_are_counted(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """Bare metal lists only `managed_by=user` by default: the exporter asks for both."""
    k8s = make_baremetal_cluster(KC, "mk8s-pool", B, managed_by="k8s")
    account.clusters.put("baremetal", 1, 20, k8s)
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        samples = await running.samples()
    assert value(samples, "gcore_gpu_image_clusters", image_id=B) == 2
    assert value(samples, "gcore_gpu_cluster_info", cluster_id=KC) == 1
    assert account.count(r"/baremetal/1/20/clusters\?managed_by=user&managed_by=k8s&") >= 1
    assert account.count(r"/virtual/1/10/clusters\?.*managed_by") == 0  # virtual has no filter


async def test_every_page_of_a_listing_is_read(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    account.max_page = 2
    for n in range(5):
        cluster = make_virtual_cluster(f"c9{n:06d}-0000-4000-8000-000000000000", f"p{n}", C)
        account.clusters.put("virtual", 1, 10, cluster)
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        samples = await running.samples()
    assert value(samples, "gcore_gpu_image_clusters", image_id=C) == 5
    assert account.count(r"/virtual/1/10/clusters\?limit=1000&offset=4$") >= 1  # the 3rd page


async def test_a_boot_volume_without_image_counts_for_no_image(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    account.clusters.put("virtual", 1, 10, make_virtual_cluster(KC, "from-snapshot", None))
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        targets = running.scheduler.targets
        samples = await running.samples()
    assert series(samples, "gcore_gpu_cluster_info", cluster_id=KC)[0]["image_id"] == ""
    assert value(samples, "gcore_gpu_image_clusters", image_id=A) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id="") is None
    assert targets.images == ()


async def test_status_changes_and_removed_clusters_leave(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        account.clusters.update("virtual", 1, 10, VC, status="resizing")
        account.clusters.remove("baremetal", 1, 20, BC)
        await running.poll_clusters()
        samples = await running.samples()
    assert series(samples, "gcore_gpu_cluster_info", cluster_id=VC)[0]["status"] == "resizing"
    assert series(samples, "gcore_gpu_cluster_info", cluster_id=BC) == []
    assert value(samples, "gcore_gpu_cluster_servers", cluster_id=BC) is None
    assert value(samples, "gcore_gpu_image_clusters", image_id=B) == 0


async def test_a_failing_listing_keeps_the_clusters_and_touches_no_image(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        before = await running.samples()
        account.inject(r"/virtual/1/10/clusters", 500, times=None)
        assert not await running.poll_clusters()
        after = await running.samples()
    up = {"endpoint": "clusters", "project_id": "1", "region_id": "10", "kind": "virtual"}
    assert value(after, "gcore_exporter_discovery_up", **up) == 0
    assert value(after, "gcore_gpu_cluster_info", cluster_id=VC) == 1
    images = {k: v for k, v in before.items() if k[0].startswith("gcore_gpu_image_")}
    assert images == {k: v for k, v in after.items() if k[0].startswith("gcore_gpu_image_")}


async def test_an_image_whose_clusters_were_never_listed_has_no_count(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """Unknown is not 0: 0 would call an image in use safe to delete."""
    account.inject(r"/virtual/1/10/clusters", 503, times=None)
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        samples = await running.samples()
    assert value(samples, "gcore_gpu_image_clusters", image_id=C) is None
    assert value(samples, "gcore_gpu_image_clusters", image_id=B) == 1


async def test_a_region_without_cluster_service_has_none_and_no_error(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    account.inject(r"/virtual/1/10/clusters", 404, times=None)
    async with exporter(targets=LISTED, clusters=True) as running:
        assert await running.poll_clusters()
        samples = await running.samples()
    up = {"endpoint": "clusters", "project_id": "1", "region_id": "10", "kind": "virtual"}
    assert value(samples, "gcore_exporter_discovery_up", **up) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id=A) == 0


async def test_an_image_a_cluster_boots_from_is_watched_though_no_target_names_it(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """Only image C is a target: the cluster on A (same scope) brings A, fetched by id; when
    the cluster goes, A goes."""
    async with exporter(targets=[f"1/10/{C}"], clusters=True) as running:
        await running.poll_clusters()
        await running.round()
        watched = await running.samples()
        account.clusters.remove("virtual", 1, 10, VC)
        await running.poll_clusters()
        await running.round()
        after = await running.samples()
    assert value(watched, "gcore_gpu_image_up", image_id=A) == 1
    assert series(watched, "gcore_gpu_image_info", image_id=A)[0]["name"] == "train-image"
    assert value(watched, "gcore_gpu_image_clusters", image_id=A) == 1
    assert value(watched, "gcore_gpu_image_clusters", image_id=C) == 0
    assert value(after, "gcore_gpu_image_up", image_id=A) is None
    assert value(after, "gcore_gpu_image_up", image_id=C) == 1


async def test_a_cluster_on_a_deleted_image_shows_the_image_missing(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """The listing no longer holds the image: it is fetched by id, and the 404 says it is gone."""
    account.clusters.put("virtual", 1, 10, make_virtual_cluster(KC, "orphan", GONE))
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        await running.round()
        await running.poll_clusters()  # still missing: still watched
        await running.round()
        samples = await running.samples()
        account.put_image(1, 10, make_image(GONE, "restored"))
        await running.round()
        await running.poll_clusters()  # listed again: no fetch of its own any more
        restored = running.scheduler.targets
    assert value(samples, "gcore_gpu_image_up", image_id=GONE) == 0
    assert value(samples, "gcore_gpu_image_last_error_info", image_id=GONE) == 1
    assert series(samples, "gcore_gpu_image_last_error_info", image_id=GONE)[0]["reason"] == (
        "not_found"
    )
    assert value(samples, "gcore_gpu_image_clusters", image_id=GONE) == 1
    assert restored.images == ()


async def test_without_clusters_nothing_is_listed(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=LISTED, clusters=False) as running:
        assert await running.poll_clusters()
        samples = await running.samples()
    assert account.count(r"/clusters") == 0
    assert not [k for k in samples if k[0].startswith(("gcore_gpu_cluster", "gcore_gpu_image_cl"))]


@pytest.mark.parametrize("shard", [0, 1])
async def test_a_shard_exports_the_clusters_of_its_images(
    account: FakeGcore, exporter: ExporterFactory, shard: int
) -> None:
    """Everything about one image on one shard; a cluster without image goes by its own id."""
    account.clusters.put("virtual", 1, 10, make_virtual_cluster(KC, "no-image", None))
    account.clusters.put("virtual", 1, 10, make_virtual_cluster(UC, "shouting", C.upper()))
    async with exporter(targets=LISTED, clusters=True, shard=shard, total_shards=2) as running:
        await running.poll_clusters()
        samples = await running.samples()
    owner = {VC: shard_of(A, 2), BC: shard_of(B, 2), KC: shard_of(KC, 2), UC: shard_of(C, 2)}
    assert {s["cluster_id"] for s in series(samples, "gcore_gpu_cluster_info")} == {
        cluster for cluster, owned_by in owner.items() if owned_by == shard
    }
    counted = {s["image_id"] for s in series(samples, "gcore_gpu_image_clusters")}
    assert counted == {i for i in (A, B, C) if shard_of(i, 2) == shard}


def test_clusters_render_each_once_and_drop_counts_no_float_holds() -> None:
    scope = Scope(1, 10)
    twice = GpuCluster(id=VC, image_id=A, servers_count=10**400)
    listed = [Listed(scope, twice), Listed(Scope(1, 10, "baremetal"), twice)]
    metrics = {m.name: m.samples for m in cluster_metrics(listed[:1])}
    assert metrics["gcore_gpu_cluster_servers"] == []
    assert ClusterCounts.of_listing([scope], listed).counts == {(1, 10, A): 2}


async def test_untrusted_cluster_items_cost_themselves_only(fake: FakeGcore, fake_url: str) -> None:
    """Only `id` is required: a field the exporter does not need never drops a cluster (its
    image would look unused); an item without an id is skipped and counted."""
    fake.clusters.clusters[("virtual", 1, 10)] = {
        "a": {"name": "no id"},
        "b": "not an object",  # type: ignore[dict-item]
        "c": {"id": VC, "status": 7, "servers_count": "many", "servers_settings": {"volumes": 3}},
        "d": {"id": KC, "servers_settings": {"volumes": [{"boot_index": True, "image_id": A}]}},
    }
    async with aiohttp.ClientSession() as session:
        transport = Transport(
            session,
            fake_url,
            SecretStr(API_KEY),
            timeout=5,
            concurrency=2,
            max_response_size=2**20,
            telemetry=Telemetry(),
        )
        skipped: list[tuple[str, str | None]] = []
        client = GcoreClient(transport, on_invalid=lambda e, i, _: skipped.append((e, i)))
        listing = await client.list_clusters(Scope(1, 10))
    assert skipped == [("clusters", None), ("clusters", None)]  # reported, never the listing
    assert [(c.id, c.status, c.servers_count, c.image_id) for c in listing] == [
        (VC, None, None, None),
        (KC, None, None, None),  # `True` is no boot index 0
    ]


async def test_a_reload_drops_the_clusters_of_scopes_no_longer_watched_at_once(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """Kept across a reload for the scopes that stay (no count drops to 0), gone at once for the
    others, and every cluster series gone when a reload turns clusters off."""
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        polling = running.app[POLLING]
        base: dict[str, Any] = {"interval": "1h", "listen": "127.0.0.1:0"}
        await polling.reload(load_settings(**base, targets=["1/10"], clusters=True))
        narrowed = await running.samples()
        await polling.reload(load_settings(**base, targets=["1/10"], clusters=False))
        off = await running.samples()
    assert value(narrowed, "gcore_gpu_cluster_info", cluster_id=VC) == 1
    assert value(narrowed, "gcore_gpu_cluster_info", cluster_id=BC) is None
    assert series(narrowed, "gcore_exporter_discovery_up", endpoint="clusters") == [
        {"project_id": "1", "region_id": "10", "kind": "virtual", "endpoint": "clusters"}
    ]
    assert not [k for k in off if k[0].startswith(("gcore_gpu_cluster", "gcore_gpu_image_cl"))]
    assert series(off, "gcore_exporter_discovery_up", endpoint="clusters") == []


async def test_an_image_id_a_cluster_writes_in_upper_case_is_the_same_image(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """UUIDs: case does not matter, as for targets. The cluster counts for the image as listed
    or configured, and brings no second image; one outside the listings is fetched by its id in
    lower case."""
    other = "4e0a6d5c-9f1b-4c2d-8a7e-5d6c7b8a9f0e"
    account.put_image(1, 20, make_image(other, "bm-other"), kind="baremetal")
    account.clusters.put("virtual", 1, 10, make_virtual_cluster(UC, "shouting", C.upper()))
    account.clusters.put("baremetal", 1, 20, make_baremetal_cluster(KC, "loud", B.upper()))
    account.clusters.put("baremetal", 1, 20, make_baremetal_cluster(GC, "louder", other.upper()))
    async with exporter(targets=["1/10", f"baremetal:1/20/{B}"], clusters=True) as running:
        await running.poll_clusters()
        await running.round()
        samples = await running.samples()
        targets = running.scheduler.targets
    assert value(samples, "gcore_gpu_image_clusters", image_id=C) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id=A) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id=B) == 2
    bare_metal = Scope(1, 20, "baremetal")
    assert targets.images == (ImageKey(bare_metal, B), ImageKey(bare_metal, other))
    assert value(samples, "gcore_gpu_image_up", image_id=other) == 1
    assert value(samples, "gcore_gpu_image_clusters", image_id=other) == 1
    named = {dict(k[1]).get("image_id") for k in samples if k[0].startswith("gcore_gpu_image_")}
    assert named - {None} == {A, B, C, other}  # None: the families of no image


async def test_image_counts_are_rendered_with_the_images_not_at_each_publication(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    """A publication renders the exporter's own registry: the counts are not in it, they are
    lines of the image store, re-rendered when the cluster poll changes them."""
    async with exporter(targets=LISTED, clusters=True) as running:
        await running.poll_clusters()
        snapshot = running.app[POLLING].monitor.publisher.current
        samples = await running.samples()
    assert b"gcore_gpu_cluster_info" in snapshot.own_text
    assert b"gcore_gpu_image_clusters" not in snapshot.own_text + snapshot.own_openmetrics
    assert value(samples, "gcore_gpu_image_clusters", image_id=A) == 1
