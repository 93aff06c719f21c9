"""GPU cluster families as data, like `families.FAMILIES`: each owns its name, help, labels and how
a source becomes samples. They answer "which clusters run on this image?":

    gcore_gpu_cluster_info{project_id="1",region_id="10",cluster_id="c1…",cluster_name="train",
        kind="virtual",status="active",image_id="f0e1…"} 1
    gcore_gpu_cluster_servers{project_id="1",region_id="10",cluster_id="c1…"} 4
    gcore_gpu_image_clusters{project_id="1",region_id="10",image_id="f0e1…"} 1

`gcore_gpu_image_clusters` is 0 for a watched image that no cluster boots from (safe to delete, as
far as clusters go) and absent for an image whose clusters were never listed (unknown is not 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.gcore.cluster_models import GpuCluster
from exporter.gcore.models import clean_text
from exporter.metrics.families import CACHED_HELP, truncate
from exporter.vocabulary import Scope

Source = TypeVar("Source")
ImageRef = tuple[int, int, str]  # project_id, region_id, image_id: how the image series name it
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
        return None if image_id is None else (self.scope.project_id, self.scope.region_id, image_id)


@dataclass(frozen=True, slots=True)
class Used:
    """A watched image and how many clusters boot from it."""

    image: ImageRef
    clusters: int


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


def _used(used: Used) -> tuple[tuple[str, ...], float]:
    project_id, region_id, image_id = used.image
    return (str(project_id), str(region_id), clean_text(image_id)), used.clusters


IMAGE_CLUSTERS: Final[ClusterFamily[Used]] = ClusterFamily(
    "gcore_gpu_image_clusters",
    CACHED_HELP + "GPU clusters whose servers boot from the image; 0 for a watched image that "
    "none uses, absent while the clusters of its project and region were never listed.",
    ("project_id", "region_id", "image_id"),
    _used,
)


def cluster_metrics(clusters: Iterable[Listed], images: Iterable[ImageRef]) -> Iterator[Metric]:
    """Every cluster family: `clusters` (one per project, region and id), and a count for each of
    `images` and of the images the clusters boot from."""
    listed = list(clusters)
    counts = dict.fromkeys(sorted(set(images)), 0)
    for item in listed:
        if item.image is not None:
            counts[item.image] = counts.get(item.image, 0) + 1
    for family in CLUSTER_FAMILIES:
        yield family.metric(listed)
    yield IMAGE_CLUSTERS.metric(Used(image, count) for image, count in sorted(counts.items()))
