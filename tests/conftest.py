"""Shared fixtures: a fake Gcore API on loopback, an in-process exporter, waiting helpers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.settings import load_settings
from exporter.daemon.lifecycle import POLLING, create_daemon
from exporter.demo.fake_gcore import FakeGcore
from exporter.polling.cadences import Poller
from exporter.polling.scheduler import RoundResult, Scheduler

API_KEY = "test-key-5f3a9c1e-SECRET"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z: where the wall clock of in-process exporters starts


class Clock:
    """A wall clock that moves only when a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GCORE_"):
            monkeypatch.delenv(name)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.02)  # poll again until the deadline


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels; duplicates fail the test."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`, None if none."""
    found = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{metric}{labels} matches {len(found)} series"
    return found[0] if found else None


def series(samples: Samples, metric: str, /, **labels: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == metric and set(labels.items()) <= ls]


@pytest.fixture
def fake() -> FakeGcore:
    return FakeGcore(api_key=API_KEY)


@pytest.fixture
async def fake_url(fake: FakeGcore) -> AsyncIterator[str]:
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


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


@pytest.fixture
def exporter(fake_url: str, monkeypatch: pytest.MonkeyPatch) -> ExporterFactory:
    """`async with exporter(targets=[...], **settings) as running:` after its first round.

    The interval defaults to an hour so that tests drive rounds themselves with `running.round()`;
    the exporter's wall clock (`running.clock`) stands at `NOW` until the test moves it, so times
    and ages are exact.
    """
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)
    monkeypatch.setenv("GCORE_BASE_URL", fake_url)

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningExporter]:
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
        app = create_daemon(settings, settings.read_api_key(), wall_clock=clock)
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

    return start
