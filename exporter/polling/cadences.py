"""Everything that polls, each on its own cadence: discovery, image rounds, the Tasks feed, GPU
clusters; and the one path by which what they found is published (`Poller.publish`).

Discovery refreshes the scope set every `discovery_interval` and hands it to the scheduler,
which polls it from its next round; the Tasks feed (failed image tasks, the pipeline's counters,
wake-ups of empty scopes) polls every `task_interval`. The first refresh comes before the first
round, so that `*` is polled from the start. The clusters are listed every `cluster_interval` from
the end of the first round (what the round's listings hold needs no fetch of its own), and the
images they boot from join the scheduler's targets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from exporter.metrics.snapshot import Publisher
from exporter.polling.clusters import Clusters, watched_scopes
from exporter.polling.discovery import Discovery
from exporter.polling.failed_tasks import FailedTasks
from exporter.polling.scheduler import Scheduler
from exporter.polling.task_feed import TaskFeed
from exporter.vocabulary import Scope

log = structlog.get_logger(__name__)


class Poller:
    def __init__(
        self,
        scheduler: Scheduler,
        discovery: Discovery,
        failed_tasks: FailedTasks,
        feed: TaskFeed,
        *,
        publisher: Publisher,
        discovery_interval: float,
        task_interval: float,
        clusters: Clusters | None = None,
        cluster_interval: float = 60.0,
    ) -> None:
        self.scheduler = scheduler
        self.discovery = discovery
        self.failed_tasks = failed_tasks
        self.feed = feed
        self._publisher = publisher
        self._discovery_interval = discovery_interval
        self._task_interval = task_interval
        self.clusters = clusters
        self._cluster_interval = cluster_interval

    def watched(self) -> set[Scope]:
        """The scopes of every target now polled: listed ones and those of explicit images."""
        return watched_scopes(self.discovery.targets)

    async def publish(self, *, ready: bool = False) -> None:
        """Publish a snapshot now: the one path polling publishes by. It runs when the poller is
        opened (what new targets dropped is gone at once), after each discovery refresh and
        failed-task poll, and after each round (`ready`: every later snapshot is ready); between
        rounds, `run` publishes what changes at most every second."""
        await self._publisher.publish(ready=ready)

    async def refresh(self) -> bool:
        """One discovery refresh, published; new scopes are polled from the next round."""
        try:
            return await self.discovery.refresh()
        finally:
            await self.publish()

    async def poll_tasks(self) -> bool:
        """One poll of the Tasks feed of every watched scope, published."""
        try:
            return await self.feed.poll(self.watched())
        finally:
            await self.publish()

    async def poll_clusters(self) -> bool:
        """One listing of the clusters of every watched scope, published; the images they boot
        from are polled from the next round. True if every listing worked (or none is made)."""
        if self.clusters is None:
            return True
        try:
            ok = await self.clusters.poll(self.watched())
            targets = self.clusters.extend(self.discovery.targets)
            if targets != self.scheduler.targets:
                self.scheduler.set_targets(targets)
            return ok
        finally:
            await self.publish()

    async def _clusters_after_first_round(self) -> None:
        await self.scheduler.wait_for_rounds(1)
        await _every(self._cluster_interval, self.poll_clusters, wait_first=False)

    async def run(self) -> None:
        """Discover, then poll on every cadence, and publish changes between rounds, until
        cancelled."""
        await _guarded(self.refresh)
        loops: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._publisher.run()),
            asyncio.create_task(self.scheduler.run()),
            asyncio.create_task(_every(self._discovery_interval, self.refresh, wait_first=True)),
            asyncio.create_task(_every(self._task_interval, self.poll_tasks, wait_first=False)),
        ]
        if self.clusters is not None:
            loops.append(asyncio.create_task(self._clusters_after_first_round()))
        try:
            await asyncio.gather(*loops)
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def once(self) -> bool:
        """Discover, poll every target, the clusters and the failed tasks once, publish; True if
        every listing of projects, regions and images and every image fetch succeeded."""
        discovered = await self.refresh()
        result = await self.scheduler.run_once()
        before = self.scheduler.targets
        await self.poll_clusters()  # like the Tasks list: reported, but decides no exit status
        if self.scheduler.targets != before:  # images clusters boot from, fetched by id
            result = await self.scheduler.run_once()
        await self.poll_tasks()  # a failed Tasks list is reported, but decides no exit status
        return discovered and result.failed == 0


async def _guarded(work: Callable[[], Awaitable[bool]]) -> None:
    """Run `work`; a bug costs this run, never the loop that runs it."""
    try:
        await work()
    except Exception:
        log.exception("unexpected error in a periodic poll", work=work.__name__)


async def _every(interval: float, work: Callable[[], Awaitable[bool]], *, wait_first: bool) -> None:
    """Run `work` every `interval` seconds (the first after one interval when `wait_first`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    if not wait_first:
        await _guarded(work)
    while True:
        started = max(started + interval, loop.time())  # a late run is not caught up on
        await asyncio.sleep(started - loop.time())
        await _guarded(work)
