"""The GPU clusters of the watched scopes, and the images they boot from.

Every `cluster_interval` the clusters of each watched project/region and kind are listed (bare
metal with `managed_by=user&managed_by=k8s`). A listing that fails keeps the scope's last known
clusters and shows as `gcore_exporter_discovery_up{endpoint="clusters"} 0`; it touches no image
series. A 404 is a region without that cluster service: no clusters, no error.

An image a cluster boots from is watched even when no target names it: it is added to the
scheduler's targets as an explicit image, fetched by id, so that a cluster on a deleted or failed
image is known as such (404, `gcore_gpu_image_up` 0) rather than as an image nobody watches. In a
listed scope the listing covers it already, so it is added only while the listing lacks it.

Sharded, a shard exports the clusters whose image it owns (a cluster without image: by its id),
so that everything about one image is on one shard.

Calls follow the images, as for the image listings (`scope_cadence`): the clusters of a scope
that holds images (or whose image listing fails) are listed every `cluster_interval`; those of a
scope whose images rest (`empty`, `unavailable`) rest with it once their own listing found none:
listed again at the discovery cadence, or at once when an image task wakes the scope. Where
clusters were found, or their listing failed, they are listed every interval.

How many clusters boot from each image is handed to the image store (`count_clusters`), which
renders `gcore_gpu_image_clusters` with the image's other lines, only where a count changed.
Image ids are compared whatever their case (UUIDs), as for targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.gcore.client import GcoreClient
from exporter.gcore.cluster_models import GpuCluster
from exporter.metrics.cluster_families import ClusterCounts, Listed, cluster_metrics
from exporter.metrics.image_store import ImageStore
from exporter.metrics.telemetry import Telemetry
from exporter.polling.scope_cadence import ScopeCadence
from exporter.sharding import EVERYTHING, Shard
from exporter.vocabulary import FetchError, ImageKey, Scope, Targets, as_gcore_writes

log = structlog.get_logger("exporter.polling.clusters")


def watched_scopes(targets: Targets) -> set[Scope]:
    """The scopes of every target: listed ones and those of explicit images."""
    return {*targets.scopes, *targets.discovered, *(key.scope for key in targets.images)}


def _labels(scope: Scope) -> tuple[str, str, str, str]:
    return str(scope.project_id), str(scope.region_id), scope.kind, "clusters"


class Clusters(Collector):
    def __init__(
        self,
        client: GcoreClient,
        *,
        store: ImageStore,
        telemetry: Telemetry,
        registry: CollectorRegistry,
        shard: Shard = EVERYTHING,
        cadence: ScopeCadence | None = None,
        interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._store = store
        self._telemetry = telemetry
        self._shard = shard
        self._now = clock
        self._listed: dict[Scope, tuple[GpuCluster, ...]] = {}  # last known, this shard's
        self._rest = _Rest(cadence, interval, clock)
        self._reported: set[Scope] = set()  # scopes with a discovery_up series
        self._lock = asyncio.Lock()
        self._registry = registry
        registry.register(self)

    def adopt(self, previous: Clusters, scopes: Iterable[Scope]) -> None:
        """Take over what the poll this one replaces (a reload) knew of `scopes`, the scopes
        watched now: no count drops to 0, and the clusters of other scopes leave at once."""
        self._listed = dict(previous._listed)
        self._rest.since = dict(previous._rest.since)
        self._reported = set(previous._reported)
        self._retain(set(scopes))
        self._count()

    def retire(self) -> None:
        """Clusters are no longer polled (a reload turned them off): their series leave."""
        for scope in {*self._listed, *self._reported}:
            self._forget(scope)
        self._count()

    def close(self) -> None:
        self._registry.unregister(self)

    async def poll(self, scopes: Iterable[Scope]) -> bool:
        """List the clusters of those of `scopes` that are due; True if every listing worked.
        Scopes no longer watched leave with their clusters. Concurrent calls run one after the
        other, so that an older listing never lands after a newer one."""
        wanted = set(scopes)
        async with self._lock:
            self._retain(wanted)
            due = sorted(scope for scope in wanted if self._rest.due(scope))
            results = await asyncio.gather(*(self._list(scope) for scope in due))
            self._count()
        return all(results)

    def extend(self, targets: Targets) -> Targets:
        """`targets` and, as explicit images, the images clusters boot from that they do not
        cover: outside the listed scopes, or missing from their scope's listing (a 404 then
        says the image is gone)."""
        listed = {*targets.scopes, *targets.discovered}
        explicit = set(targets.images)
        stored = _Folded(self._store)
        extra: set[ImageKey] = set()
        for scope, clusters in self._listed.items():
            for cluster in clusters:
                if cluster.image_id is None:
                    continue
                key = stored.key(ImageKey(scope, as_gcore_writes(cluster.image_id)))
                if key not in explicit and (scope not in listed or self._unlisted(key)):
                    extra.add(key)
        if not extra:
            return targets
        return replace(targets, images=(*targets.images, *sorted(extra)))

    def collect(self) -> Iterator[Metric]:
        return cluster_metrics(self._unique())

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def _unique(self) -> list[Listed]:
        """Every cluster known, once (a cluster listed twice, by both kinds or by paging)."""
        seen: set[tuple[int, int, str]] = set()
        listed: list[Listed] = []
        for scope in sorted(self._listed):
            for cluster in self._listed[scope]:
                ident = (scope.project_id, scope.region_id, cluster.id)
                if ident not in seen:
                    seen.add(ident)
                    listed.append(Listed(scope, cluster))
        return listed

    def _count(self) -> None:
        """Hand the images' cluster counts to the store, which re-renders those that changed."""
        self._store.count_clusters(ClusterCounts.of_listing(self._listed, self._unique()))

    def _unlisted(self, key: ImageKey) -> bool:
        """Whether the image is missing from its scope's listing: not in the store, or kept there
        only as an explicit image that its last fetch did not find."""
        state = self._store.get(key)
        return state is None or (state.explicit and not state.up)

    async def _list(self, scope: Scope) -> bool:
        try:
            listed = await self._client.list_clusters(scope)
        except FetchError as exc:
            if exc.reason != "not_found":
                self._rest.forget(scope)  # listed again every interval until it works
                self._up(scope, False)
                log.warning(
                    "cluster listing failed: the last known clusters are kept",
                    project_id=scope.project_id,
                    region_id=scope.region_id,
                    kind=scope.kind,
                    **exc.log_fields(),
                )
                return False
            clusters: tuple[GpuCluster, ...] = ()  # no cluster service there: none to count
        else:  # a cluster without a usable id is skipped and counted by the client
            owns = self._shard.owns
            clusters = tuple(c for c in listed if owns(as_gcore_writes(c.image_id or c.id)))
        self._listed[scope] = clusters
        self._rest.listed(scope, found=bool(clusters))
        self._up(scope, True)
        return True

    def _up(self, scope: Scope, ok: bool) -> None:
        telemetry = self._telemetry
        self._reported.add(scope)
        telemetry.discovery_up.labels(*_labels(scope)).set(int(ok))
        if ok:
            telemetry.discovery_last_success.labels(*_labels(scope)).set(self._now())

    def _retain(self, scopes: set[Scope]) -> None:
        for scope in {*self._listed, *self._reported} - scopes:
            self._forget(scope)

    def _forget(self, scope: Scope) -> None:
        self._listed.pop(scope, None)
        self._rest.forget(scope)
        self._reported.discard(scope)
        for gauge in (self._telemetry.discovery_up, self._telemetry.discovery_last_success):
            with contextlib.suppress(KeyError):  # a listing that never worked has no last success
                gauge.remove(*_labels(scope))


class _Rest:
    """When a scope's clusters are listed: every interval, unless their last listing found none
    while the scope's images rest; then with the images' cadence, or at once when an image task
    wakes the scope."""

    def __init__(
        self, cadence: ScopeCadence | None, interval: float, clock: Callable[[], float]
    ) -> None:
        self._cadence = cadence  # the image listings' (None: every scope every interval)
        self._interval = interval
        self._now = clock
        self.since: dict[Scope, tuple[float, int]] = {}  # found none: when, and wakes then

    def listed(self, scope: Scope, *, found: bool) -> None:
        """A listing of `scope` worked; `found`: it held clusters (of this shard)."""
        if found:
            self.since.pop(scope, None)
        else:
            wakes = self._cadence.wakes(scope) if self._cadence is not None else 0
            self.since[scope] = (self._now(), wakes)

    def forget(self, scope: Scope) -> None:
        """Listed every interval again: its listing failed, or it left."""
        self.since.pop(scope, None)

    def due(self, scope: Scope) -> bool:
        """Whether `scope`'s clusters are listed now: unless they were found none and the scope's
        images rest (and it was not woken since), within their cadence's interval."""
        resting, cadence = self.since.get(scope), self._cadence
        if resting is None or cadence is None:
            return True
        state = cadence.cadence(scope)
        if state is None or state in ("images", "failing"):
            return True
        since, wakes = resting
        if cadence.wakes(scope) != wakes:
            return True
        # half a round of slack, as for images: a poll a little early must not wait a whole one
        return self._now() - since >= cadence.every(state) - self._interval / 2


class _Folded:
    """The store's key for an image named in any case, looked up case-insensitively only when the
    exact key misses (the index built once, on the first miss)."""

    def __init__(self, store: ImageStore) -> None:
        self._store = store
        self._index: dict[tuple[Scope, str], ImageKey] | None = None

    def key(self, key: ImageKey) -> ImageKey:
        if key in self._store:
            return key
        if self._index is None:
            self._index = {(k.scope, k.image_id.lower()): k for k in self._store.keys()}  # noqa: SIM118 (a copy)
        return self._index.get((key.scope, key.image_id.lower()), key)
