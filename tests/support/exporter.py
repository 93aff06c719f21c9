"""The whole exporter in process, on a loopback port, with a wall clock the test moves."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from exporter.config.settings import Settings, load_settings
from exporter.daemon.lifecycle import POLLING, create_daemon
from exporter.daemon.wiring import RetryFor, retry_policy
from exporter.gcore.transport import RetryPolicy
from exporter.polling.cadences import Poller
from exporter.polling.scheduler import RoundResult, Scheduler
from support.clock import Clock
from support.exposition import Samples, parse_samples


def no_backoff(settings: Settings) -> RetryPolicy:
    """The daemon's retry policy without its back-off: as many attempts, none of them waited for
    (a test of failures would otherwise sleep through real back-off)."""
    return dataclasses.replace(retry_policy(settings), backoff_base=0.0, backoff_cap=0.0)


@dataclass
class RunningExporter:
    url: str
    app: web.Application
    http: aiohttp.ClientSession
    clock: Clock

    @property
    def scheduler(self) -> Scheduler:
        return self.app[POLLING].scheduler

    @property
    def poller(self) -> Poller:
        return self.app[POLLING].poller

    async def scrape(self, **headers: str) -> str:
        async with self.http.get(self.url + "/metrics", headers=headers) as response:
            assert response.status == 200
            return await response.text()

    async def samples(self) -> Samples:
        return parse_samples(await self.scrape())

    async def round(self) -> RoundResult:
        """Run one more poll round now and wait until it is published."""
        return await asyncio.wait_for(self.scheduler.start_round(), 30)

    async def refresh(self) -> bool:
        """Run one discovery refresh now (projects and regions listed, wildcards expanded)."""
        return await asyncio.wait_for(self.poller.refresh(), 30)

    async def poll_tasks(self) -> bool:
        """Run one poll of the failed tasks now and publish it."""
        return await asyncio.wait_for(self.poller.poll_tasks(), 30)

    async def poll_clusters(self) -> bool:
        """Run one listing of the GPU clusters now (the images they boot from join the
        targets) and publish it."""
        return await asyncio.wait_for(self.poller.poll_clusters(), 30)


ExporterFactory = Callable[..., Any]


@asynccontextmanager
async def running_exporter(
    *, retry: RetryFor = no_backoff, **overrides: Any
) -> AsyncIterator[RunningExporter]:
    """The exporter with the settings of the environment and `overrides`, after its first round.

    The interval defaults to an hour so that tests drive rounds themselves with `running.round()`;
    the wall clock (`running.clock`) stands at `NOW` until the test moves it, so times and ages
    are exact. Retries do not back off unless `retry` says so (`retry_policy`, the daemon's).
    """
    # Clusters are listed in the background after the first round: tests that count requests
    # would race with it, so the tests of clusters turn them on (and drive their polls).
    options: dict[str, Any] = {
        "interval": "1h",
        "listen": "127.0.0.1:0",
        "clusters": False,
        **overrides,
    }
    settings = load_settings(**options)
    clock = Clock()
    app = create_daemon(settings, settings.read_api_key(), wall_clock=clock, retry=retry)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            running = RunningExporter(f"http://127.0.0.1:{port}", app, http, clock)
            await asyncio.wait_for(running.scheduler.wait_for_rounds(1), 10)
            yield running
    finally:
        await runner.cleanup()
