"""Wires settings into running parts: the upstream API (Gcore or the demo), a session, a poller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from exporter import __version__
from exporter.client import GcoreClient, RetryPolicy
from exporter.config import Settings, Targets
from exporter.demo import DEMO_API_KEY, DemoWorld, animate
from exporter.fakeapi import FakeGcore
from exporter.poller import Poller
from exporter.telemetry import Telemetry


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
async def upstream_for(settings: Settings) -> AsyncIterator[Upstream]:
    if settings.demo:
        async with demo_upstream(settings) as upstream:
            yield upstream
    else:
        yield Upstream(settings.base_url, settings.read_api_key(), settings.resolved_targets())


@asynccontextmanager
async def open_poller(settings: Settings, upstream: Upstream) -> AsyncIterator[Poller]:
    """A poller with its own HTTP session and telemetry; not yet running."""
    telemetry = Telemetry()
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
        yield Poller(
            client,
            upstream.targets,
            interval=settings.interval,
            stale_after=settings.effective_stale_after,
            telemetry=telemetry,
        )
