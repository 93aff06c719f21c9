"""Turns wildcard targets (`*`, `PROJECT/*`, `*/REGION`) into the scopes to list.

A refresh lists projects and regions (only when a wildcard is configured) and expands every
wildcard against them: active projects (or projects without a state) times every ACTIVE region.
The regions' capability flags (`has_ai_gpu`, `has_baremetal`) are not used: what they mean is
undocumented and probably not "serves GPU images of this kind" (docs/gcore-api.md), so each
scope's first listing is the probe, and a 404 makes it `unavailable` until the next discovery
(see `scope_cadence`). `*/REGION` takes the region as given. A listing that fails keeps the last
known set. The names of what was listed are exported KSM-style, to be joined on the id:

    gcore_gpu_project_info{project_id="1",project_name="ml-research"} 1
    gcore_gpu_region_info{region_id="10",region_name="Luxembourg-2",slug="luxembourg-2",
        zone="EMEA",country="LU"} 1
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.gcore.client import GcoreClient
from exporter.gcore.models import Project, Region, clean_text
from exporter.metrics.families import CACHED_HELP
from exporter.metrics.scope_health import AccountEndpoint, account_up
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import FetchError, Scope, Targets

log = structlog.get_logger(__name__)

Listed = TypeVar("Listed", Project, Region)


def usable_projects(projects: Iterable[Project]) -> list[int]:
    """Ids of the projects to watch: ACTIVE ones, and those that carry no state."""
    return sorted({p.id for p in projects if (p.state or "ACTIVE").upper() == "ACTIVE"})


def active_regions(regions: Iterable[Region]) -> list[int]:
    """Ids of the ACTIVE regions, whatever their capability flags say: each is probed."""
    return sorted({r.id for r in regions if r.state.upper() == "ACTIVE"})


def expand(
    config: Targets, projects: Sequence[Project] | None, regions: Sequence[Region] | None
) -> Targets:
    """`config` with its wildcards expanded into `discovered` scopes (None: never listed).

    A configured scope stays configured (a 404 there is an error); configured images inside a
    discovered scope are left to its listing.
    """
    configured = set(config.scopes)
    found: set[Scope] = set()
    for wildcard in config.wildcards:
        if wildcard.project_id is not None:
            project_ids = [wildcard.project_id]
        else:
            project_ids = usable_projects(projects or ())
        if wildcard.region_id is not None:
            region_ids = [wildcard.region_id]
        else:
            region_ids = active_regions(regions or ())
        found.update(Scope(p, r, wildcard.kind) for p in project_ids for r in region_ids)
    found -= configured
    watched = configured | found
    return Targets(
        images=tuple(key for key in config.images if key.scope not in watched),
        scopes=config.scopes,
        wildcards=config.wildcards,
        discovered=tuple(sorted(found)),
    )


class AccountInfo(Collector):
    """`gcore_gpu_project_info` and `gcore_gpu_region_info` of the last successful listings."""

    def __init__(self) -> None:
        self.projects: dict[int, str] = {}
        self.regions: dict[int, tuple[str, str, str, str]] = {}  # name, slug, zone, country

    def collect(self) -> Iterator[Metric]:
        projects = GaugeMetricFamily(
            "gcore_gpu_project_info",
            CACHED_HELP + "A project the API key can see, always 1; join on project_id.",
            labels=["project_id", "project_name"],
        )
        for project_id, name in sorted(self.projects.items()):
            projects.add_metric([str(project_id), name], 1)
        regions = GaugeMetricFamily(
            "gcore_gpu_region_info",
            CACHED_HELP + "A region of Gcore Cloud, always 1; join on region_id.",
            labels=["region_id", "region_name", "slug", "zone", "country"],
        )
        for region_id, labels in sorted(self.regions.items()):
            regions.add_metric([str(region_id), *labels], 1)
        yield projects
        yield regions

    def describe(self) -> Iterator[Metric]:
        return self.collect()


def _region_labels(region: Region) -> tuple[str, str, str, str]:
    """The info labels of a region; empty where Gcore sends nothing."""
    texts = (region.display_name, region.slug, region.zone, region.country)
    name, slug, zone, country = (clean_text(text or "") for text in texts)
    return name, slug, zone, country


class Discovery:
    """Owns the configured targets and their expansion; tells `on_change` when it changes."""

    def __init__(
        self,
        client: GcoreClient,
        config: Targets,
        *,
        telemetry: Telemetry,
        registry: CollectorRegistry,
        on_change: Callable[[Targets], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._config = config
        self._telemetry = telemetry
        self._on_change = on_change
        self._now = clock
        self._projects: tuple[Project, ...] | None = None
        self._regions: tuple[Region, ...] | None = None
        self._info = AccountInfo()
        self._lock = asyncio.Lock()
        self.targets = expand(config, None, None)
        self._registry = registry
        registry.register(self._info)

    def adopt(self, previous: Discovery) -> None:
        """Take over the listings a discovery this one replaces (a reload) made, and expand the
        wildcards with them at once: the scopes they found keep being polled, without a gap."""
        self._projects, self._regions = previous._projects, previous._regions
        self._info.projects, self._info.regions = previous._info.projects, previous._info.regions
        self.targets = expand(self._config, self._projects, self._regions)

    def close(self) -> None:
        self._registry.unregister(self._info)

    async def refresh(self) -> bool:
        """List projects and regions and expand the wildcards again; True if both listings
        succeeded (or none was needed). Concurrent calls run one after the other."""
        if not self._config.wildcards:
            return True
        async with self._lock:
            projects = await self._list("projects", self._client.list_projects)
            regions = await self._list("regions", self._client.list_regions)
            if projects is not None:
                self._projects = projects
                self._info.projects = {p.id: clean_text(p.name) for p in projects}
            if regions is not None:
                self._regions = regions
                self._info.regions = {r.id: _region_labels(r) for r in regions}
            targets = expand(self._config, self._projects, self._regions)
            if targets != self.targets:
                before = set(self.targets.discovered)
                after = set(targets.discovered)
                log.info(
                    "discovered scopes changed",
                    scopes=len(after),
                    added=[s.spec() for s in sorted(after - before)],
                    removed=[s.spec() for s in sorted(before - after)],
                )
                self.targets = targets
                self._on_change(targets)
            return projects is not None and regions is not None

    async def _list(
        self, endpoint: AccountEndpoint, listing: Callable[[], Awaitable[tuple[Listed, ...]]]
    ) -> tuple[Listed, ...] | None:
        try:
            items = await listing()
        except FetchError as exc:
            account_up(self._telemetry, endpoint, False)
            log.warning(
                "listing failed: the last known set is kept", endpoint=endpoint, **exc.log_fields()
            )
            return None
        account_up(self._telemetry, endpoint, True, self._now)
        return items
