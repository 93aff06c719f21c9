"""GPU cluster families as data, like `families.FAMILIES`: each owns its name, help, labels and how
a source becomes samples. They answer "which clusters run on this image?":

    gcore_gpu_cluster_info{project_id="1",region_id="10",cluster_id="c1…",cluster_name="train",
        kind="virtual",status="active",image_id="f0e1…"} 1
    gcore_gpu_cluster_servers{project_id="1",region_id="10",cluster_id="c1…"} 4

and `ClusterCounts` says how many boot from each image: the image store renders that as the
per-image family `gcore_gpu_image_clusters` (`families.USAGE_FAMILIES`), once per change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.gcore.cluster_models import GpuCluster
from exporter.gcore.models import clean_text
from exporter.metrics.families import CACHED_HELP, truncate
from exporter.vocabulary import ImageKey, Scope

Source = TypeVar("Source")
ImageRef = tuple[int, int, str]  # project_id, region_id, image_id in lower case
NO_STATUS: Final = "unknown"  # a cluster that came without a status
MAX_EXACT: Final = 2**53  # the largest count a float64 holds exactly


@dataclass(frozen=True, slots=True)
class Listed:
    """A cluster as exported: the scope it was listed in, and what Gcore said of it."""

    scope: Scope
    cluster: GpuCluster

    @property
    def image(self) -> ImageRef | None:
        image_id = self.cluster.image_id
        return None if image_id is None else image_ref(self.scope, image_id)


def image_ref(scope: Scope, image_id: str) -> ImageRef:
    """An image as a cluster names it: in either kind's scope (an image listed under both is
    exported under one), and whatever the case of its id (UUIDs: case does not matter)."""
    return scope.project_id, scope.region_id, image_id.lower()


@dataclass(frozen=True, slots=True)
class ClusterFamily(Generic[Source]):
    name: str
    help: str
    labels: tuple[str, ...]
    sample: Callable[[Source], tuple[tuple[str, ...], float] | None]

    def metric(self, sources: Iterable[Source]) -> Metric:
        family = GaugeMetricFamily(self.name, self.help, labels=list(self.labels))
        for source in sources:
            sample = self.sample(source)
            if sample is not None:
                family.add_metric(list(sample[0]), sample[1])
        return family


def _ids(listed: Listed) -> tuple[str, str, str]:
    scope = listed.scope
    return str(scope.project_id), str(scope.region_id), clean_text(listed.cluster.id)


def _info(listed: Listed) -> tuple[tuple[str, ...], float]:
    cluster = listed.cluster
    name = truncate(clean_text(cluster.name or ""))
    status = clean_text(cluster.status or NO_STATUS).lower()
    image = clean_text(cluster.image_id or "")
    return (*_ids(listed), name, listed.scope.kind, status, image), 1


def _servers(listed: Listed) -> tuple[tuple[str, ...], float] | None:
    count = listed.cluster.servers_count
    if count is None or not 0 <= count <= MAX_EXACT:  # 10**400 servers is no float64
        return None
    return _ids(listed), float(count)


CLUSTER_FAMILIES: Final[tuple[ClusterFamily[Listed], ...]] = (
    ClusterFamily(
        "gcore_gpu_cluster_info",
        CACHED_HELP + "A GPU cluster of a watched project and region, always 1: its name, kind, "
        "status and the image its servers boot from (empty when Gcore names none).",
        ("project_id", "region_id", "cluster_id", "cluster_name", "kind", "status", "image_id"),
        _info,
    ),
    ClusterFamily(
        "gcore_gpu_cluster_servers",
        CACHED_HELP + "Servers of a GPU cluster (servers_count).",
        ("project_id", "region_id", "cluster_id"),
        _servers,
    ),
)


def cluster_metrics(clusters: Iterable[Listed]) -> Iterator[Metric]:
    """Every cluster family of `clusters` (one per project, region and id)."""
    listed = list(clusters)
    for family in CLUSTER_FAMILIES:
        yield family.metric(listed)


@dataclass(frozen=True, slots=True)
class ClusterCounts:
    """What the cluster poll knows of images: the scopes whose clusters were listed, and how
    many of their clusters boot from each image (by `image_ref`)."""

    listed: frozenset[Scope] = frozenset()
    counts: Mapping[ImageRef, int] = field(default_factory=dict)

    @classmethod
    def of_listing(cls, listed: Iterable[Scope], clusters: Iterable[Listed]) -> ClusterCounts:
        counts: dict[ImageRef, int] = {}
        for item in clusters:
            image = item.image
            if image is not None:
                counts[image] = counts.get(image, 0) + 1
        return cls(frozenset(listed), counts)

    def of(self, key: ImageKey) -> int | None:
        """`gcore_gpu_image_clusters` of the image: None (absent) while its scope's clusters
        were never listed, unknown is not 0; 0 for one that no cluster names."""
        if key.scope not in self.listed:
            return None
        return self.counts.get(image_ref(key.scope, key.image_id), 0)


NO_CLUSTERS: Final = ClusterCounts()
