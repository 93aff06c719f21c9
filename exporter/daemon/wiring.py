"""Wires settings into running parts: the upstream (Gcore or the demo), the monitor that outlives
every poller, and the poller (discovery, image rounds, failed tasks) with its own HTTP session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from exporter import __version__
from exporter.config.keys import KeySource
from exporter.config.settings import Settings
from exporter.demo.fake_gcore import FakeGcore
from exporter.demo.world import DEMO_API_KEY, TARGETS, DemoWorld, animate
from exporter.gcore.client import GcoreClient
from exporter.gcore.transport import RateGate, RetryPolicy, Transport
from exporter.metrics.image_store import ImageStore
from exporter.metrics.scope_health import ScopeHealth
from exporter.metrics.snapshot import Publisher
from exporter.metrics.telemetry import Telemetry
from exporter.polling.cadences import Poller
from exporter.polling.discovery import Discovery
from exporter.polling.failed_tasks import FailedTasks
from exporter.polling.fetcher import NO_TARGETS, Fetcher
from exporter.polling.scheduler import Scheduler
from exporter.polling.task_cache import TaskCache
from exporter.vocabulary import Targets


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the poller fetches from, with what key, and what."""

    base_url: str
    api_key: SecretStr | KeySource
    targets: Targets

    def __repr__(self) -> str:
        return f"Upstream(base_url={self.base_url!r})"


def demo_settings(settings: Settings) -> Settings:
    """`settings` with the demo's own targets, which replace any given."""
    return settings.model_copy(update={"targets": TARGETS})


@asynccontextmanager
async def demo_upstream(settings: Settings) -> AsyncIterator[Upstream]:
    """Serve the simulated Gcore account on a loopback port for as long as the context lasts."""
    fake = FakeGcore(api_key=DEMO_API_KEY)
    world = DemoWorld(fake)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    ticker: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        ticker = asyncio.create_task(animate(world))
        targets = polled_targets(demo_settings(settings))
        yield Upstream(f"http://127.0.0.1:{port}", SecretStr(DEMO_API_KEY), targets)
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        await runner.cleanup()


@asynccontextmanager
async def upstream_for(
    settings: Settings, api_key: SecretStr | KeySource | None
) -> AsyncIterator[Upstream]:
    """The demo's upstream, or Gcore with `api_key` (read once, by the caller, at startup)."""
    if settings.demo:
        async with demo_upstream(settings) as upstream:
            yield upstream
    elif api_key is None:
        raise ValueError("an API key is required outside the demo")
    else:
        yield Upstream(settings.base_url, api_key, polled_targets(settings))


def polled_targets(settings: Settings) -> Targets:
    """The targets this process polls: of explicit images, only its shard's (every shard pages
    the listings, and keeps only its own images of them)."""
    targets = settings.resolved_targets()
    owns = settings.shard_assignment().owns
    return replace(targets, images=tuple(k for k in targets.images if owns(k.image_id)))


@dataclass(frozen=True, slots=True)
class Monitor:
    """What outlives every poller (a reload replaces the poller): what scrapes read."""

    telemetry: Telemetry
    store: ImageStore
    publisher: Publisher
    scopes: ScopeHealth
    after_round: Callable[[], None] = lambda: None  # the process's memory policy, per round


def new_monitor(
    settings: Settings,
    wall_clock: Callable[[], float] = time.time,
    after_round: Callable[[], None] = lambda: None,
) -> Monitor:
    telemetry = Telemetry(shard=settings.shard_assignment())
    publisher = Publisher(lambda: store.blocks(), telemetry.registry)
    store = ImageStore(
        stale_after=settings.effective_stale_after, clock=wall_clock, on_change=publisher.mark_dirty
    )
    telemetry.images.set_function(lambda: len(store))
    scopes = ScopeHealth(telemetry, wall_clock)
    return Monitor(telemetry, store, publisher, scopes, after_round)


@asynccontextmanager
async def open_poller(
    settings: Settings,
    upstream: Upstream,
    monitor: Monitor,
    wall_clock: Callable[[], float] = time.time,
    *,
    gate: RateGate | None = None,
    previous: Poller | None = None,
) -> AsyncIterator[Poller]:
    """Discovery, scheduler and failed-task poll with their own HTTP session, feeding `monitor`;
    not yet running.

    `previous` is the poller this one replaces (a reload): its discovered scopes and failed tasks
    are taken over, so images that stay keep their series without a gap. `gate` is its rate-limit
    gate: a pause after a 429 outlives the replacement.
    """
    telemetry = monitor.telemetry
    async with aiohttp.ClientSession(
        headers={"User-Agent": f"gcore-gpu-image-exporter/{__version__}"},
        connector=aiohttp.TCPConnector(limit=settings.concurrency),
    ) as session:
        client = GcoreClient(
            Transport(
                session,
                upstream.base_url,
                upstream.api_key,
                timeout=settings.effective_timeout,
                concurrency=settings.concurrency,
                max_response_size=settings.max_response_size,
                telemetry=telemetry,
                retry=RetryPolicy(budget=settings.interval),
                gate=gate,
            )
        )
        telemetry.rate_limit_paused.set_function(lambda: int(client.gate.remaining > 0))
        tasks = TaskCache(
            client.get_task,
            ttl=settings.interval,
            on_failure=lambda error: telemetry.task_fetch_errors.labels(error.reason).inc(),
        )
        fetcher = Fetcher(
            client,
            store=monitor.store,
            tasks=tasks,
            scopes=monitor.scopes,
            shard=telemetry.shard,
        )
        discovery = Discovery(
            client,
            upstream.targets,
            telemetry=telemetry,
            registry=telemetry.registry,
            on_change=lambda targets: scheduler.set_targets(targets),
            clock=wall_clock,
        )
        failed_tasks = FailedTasks(
            client,
            telemetry=telemetry,
            registry=telemetry.registry,
            pattern=settings.image_task_pattern,
            window=settings.failed_task_window,
            clock=wall_clock,
        )
        try:
            if previous is not None:
                discovery.adopt(previous.discovery)
                failed_tasks.adopt(previous.failed_tasks)
            before = previous.scheduler.targets if previous is not None else NO_TARGETS
            fetcher.register(discovery.targets, before)
            scheduler = Scheduler(
                fetcher,
                discovery.targets,
                store=monitor.store,
                publisher=monitor.publisher,
                telemetry=telemetry,
                interval=settings.interval,
                workers=settings.concurrency,
                wall_clock=wall_clock,
                after_round=monitor.after_round,
            )
            yield Poller(
                scheduler,
                discovery,
                failed_tasks,
                publisher=monitor.publisher,
                discovery_interval=settings.discovery_interval,
                task_interval=settings.effective_task_interval,
            )
        finally:
            discovery.close()
            failed_tasks.close()


@asynccontextmanager
async def open_scheduler(
    settings: Settings,
    upstream: Upstream,
    monitor: Monitor,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Scheduler]:
    """A scheduler of explicit targets with its own HTTP session, feeding `monitor`; not yet
    running (wildcards need the poller's discovery)."""
    async with open_poller(settings, upstream, monitor, wall_clock) as poller:
        yield poller.scheduler
