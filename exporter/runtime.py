"""Wires settings into running parts: the upstream (Gcore or the demo), the monitor, a scheduler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from exporter import __version__
from exporter.client import GcoreClient, RetryPolicy
from exporter.config import Settings
from exporter.demo import DEMO_API_KEY, DemoWorld, animate
from exporter.fakeapi import FakeGcore
from exporter.fetcher import Fetcher
from exporter.image_store import ImageStore
from exporter.scheduler import Scheduler
from exporter.snapshot import Publisher
from exporter.task_cache import TaskCache
from exporter.telemetry import Telemetry
from exporter.vocabulary import Targets
from exporter.web import create_app


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the poller fetches from, with what key, and what."""

    base_url: str
    api_key: SecretStr
    targets: Targets

    def __repr__(self) -> str:
        return f"Upstream(base_url={self.base_url!r})"


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
        targets = settings.model_copy(update={"targets": tuple(world.targets)})
        ticker = asyncio.create_task(animate(world))
        yield Upstream(
            f"http://127.0.0.1:{port}", SecretStr(DEMO_API_KEY), targets.resolved_targets()
        )
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        await runner.cleanup()


@asynccontextmanager
async def upstream_for(settings: Settings, api_key: SecretStr | None) -> AsyncIterator[Upstream]:
    """The demo's upstream, or Gcore with `api_key` (read once, by the caller, at startup)."""
    if settings.demo:
        async with demo_upstream(settings) as upstream:
            yield upstream
    elif api_key is None:
        raise ValueError("an API key is required outside the demo")
    else:
        yield Upstream(settings.base_url, api_key, settings.resolved_targets())


@dataclass(frozen=True, slots=True)
class Monitor:
    """The parts that exist before any I/O: what scrapes read until polling has begun."""

    telemetry: Telemetry
    store: ImageStore
    publisher: Publisher


def new_monitor(settings: Settings, wall_clock: Callable[[], float] = time.time) -> Monitor:
    telemetry = Telemetry(shard=settings.shard_assignment())
    publisher = Publisher(lambda: store.blocks(), telemetry.registry)
    store = ImageStore(
        stale_after=settings.effective_stale_after, clock=wall_clock, on_change=publisher.mark_dirty
    )
    telemetry.images.set_function(lambda: len(store))
    return Monitor(telemetry, store, publisher)


@asynccontextmanager
async def open_scheduler(
    settings: Settings,
    upstream: Upstream,
    monitor: Monitor,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Scheduler]:
    """A scheduler with its own HTTP session, feeding `monitor`; not yet running."""
    telemetry = monitor.telemetry
    async with aiohttp.ClientSession(
        headers={"User-Agent": f"gcore-gpu-image-exporter/{__version__}"},
        connector=aiohttp.TCPConnector(limit=settings.concurrency),
    ) as session:
        client = GcoreClient(
            session,
            upstream.base_url,
            upstream.api_key,
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            telemetry=telemetry,
            retry=RetryPolicy(budget=settings.interval),
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
            telemetry=telemetry,
            shard=telemetry.shard,
        )
        yield Scheduler(
            fetcher,
            upstream.targets,
            store=monitor.store,
            publisher=monitor.publisher,
            telemetry=telemetry,
            interval=settings.interval,
            workers=settings.concurrency,
            wall_clock=wall_clock,
        )


SCHEDULER = web.AppKey("scheduler", Scheduler)


def create_daemon(settings: Settings, api_key: SecretStr | None) -> web.Application:
    """The HTTP app with polling started and stopped through its `cleanup_ctx`."""
    monitor = new_monitor(settings)
    app = create_app(monitor.publisher)

    async def polling(app: web.Application) -> AsyncIterator[None]:
        async with (
            upstream_for(settings, api_key) as upstream,
            open_scheduler(settings, upstream, monitor) as scheduler,
        ):
            app[SCHEDULER] = scheduler
            running = asyncio.create_task(scheduler.run())
            yield
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    app.cleanup_ctx.append(polling)
    return app
