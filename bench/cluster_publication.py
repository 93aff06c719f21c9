"""What `gcore_gpu_image_clusters` costs a publication, before and after it joined the image store.

Before, it was a registry collector: every publication (after each round, and up to once a second
while anything changes) rendered one sample per watched image through prometheus_client, on the
event loop. After, it is a per-image family: the cluster poll re-renders the images whose count
changed, and a publication only renders the registry's cluster families (one sample per
cluster). Both are measured on the same store of N images with N / K clusters (the cluster
families are in both), and without the cluster families, to tell what is per cluster; "before"
rebuilds the old collector here, from the same counts. "first count" is the cluster poll that
counts every image at once, "recount" one that changes nothing. Usage:
`python -m bench.cluster_publication [N ...] [--repeat R] [--images-per-cluster K]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.demo.fake_gcore import make_image
from exporter.gcore.cluster_models import GpuCluster
from exporter.gcore.models import Image
from exporter.metrics.cluster_families import ClusterCounts, Listed, cluster_metrics
from exporter.metrics.families import USAGE_FAMILIES
from exporter.metrics.image_store import ImageStore
from exporter.metrics.snapshot import Publisher
from exporter.vocabulary import ImageKey, Scope

SCOPE = Scope(1, 10)


class ClusterFamilies(Collector):
    """The cluster poll's registry families (one sample per cluster): in both measurements."""

    def __init__(self, listed: list[Listed]) -> None:
        self.listed = listed

    def collect(self) -> Iterator[Metric]:
        return cluster_metrics(self.listed)


class OldImageClusters(Collector):
    """The collector `gcore_gpu_image_clusters` was: one sample per watched image, rendered by
    prometheus_client at each publication."""

    def __init__(self, store: ImageStore, counts: ClusterCounts) -> None:
        self.store, self.counts = store, counts

    def collect(self) -> Iterator[Metric]:
        family = USAGE_FAMILIES[0]
        labels = ["project_id", "region_id", "image_id"]
        metric = GaugeMetricFamily(family.name, family.help, labels=labels)
        for key in self.store.keys():  # noqa: SIM118 (a copy)
            count = self.counts.of(key)
            if count is not None:
                ids = [str(key.scope.project_id), str(key.scope.region_id), key.image_id]
                metric.add_metric(ids, count)
        yield metric


def image_id(n: int) -> str:
    return f"5ca1ab1e-0000-4000-8000-{n:012d}"


def filled(images: int, per_cluster: int) -> tuple[ImageStore, list[Listed]]:
    store = ImageStore(stale_after=300)
    for n in range(images):
        image = Image.model_validate(make_image(image_id(n), f"img-{n}"))
        store.succeeded(ImageKey(SCOPE, image.id), image, None)
    clusters = [
        Listed(SCOPE, GpuCluster(id=f"c{n}", image_id=image_id(n * 7 % images), servers_count=4))
        for n in range(images // per_cluster)
    ]
    return store, clusters


async def seconds(work: Callable[[], Awaitable[object]], repeat: int) -> float:
    """The median wall time of `work`, run `repeat` times."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def measure(images: int, repeat: int, per_cluster: int) -> str:
    store, clusters = filled(images, per_cluster)
    counts = ClusterCounts.of_listing([SCOPE], clusters)
    started = time.perf_counter()
    store.count_clusters(counts)
    first_count = time.perf_counter() - started
    started = time.perf_counter()
    unchanged = store.count_clusters(counts)
    recount = time.perf_counter() - started
    assert unchanged == 0

    alone = Publisher(store.lines, CollectorRegistry(auto_describe=False))
    alone_s = await seconds(alone.publish, repeat)

    after = CollectorRegistry(auto_describe=False)
    after.register(ClusterFamilies(clusters))
    publisher = Publisher(store.lines, after)
    await publisher.publish()  # folds what was staged
    after_s = await seconds(publisher.publish, repeat)

    before = CollectorRegistry(auto_describe=False)
    before.register(ClusterFamilies(clusters))
    before.register(OldImageClusters(store, counts))
    old = Publisher(store.lines, before)
    before_s = await seconds(old.publish, repeat)
    return (
        f"| {images:,} | {len(clusters):,} | {before_s * 1e3:.0f} | {after_s * 1e3:.0f} "
        f"| {alone_s * 1e3:.0f} | {first_count * 1e3:.0f} | {recount * 1e3:.0f} |"
    )


async def main(sizes: list[int], repeat: int, per_cluster: int) -> None:
    print("| images | clusters | publication before, ms | after, ms ", end="")
    print("| no cluster families, ms | first count, ms | recount, ms |")
    print("|---|---|---|---|---|---|---|")
    for images in sizes:
        print(await measure(images, repeat, per_cluster), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images-per-cluster", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.sizes, arguments.repeat, arguments.images_per_cluster))
