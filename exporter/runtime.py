"""Wires settings into running parts: the upstream (Gcore or the demo), the monitor, a scheduler,
and the polling that outlives reloads of the configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from exporter import __version__
from exporter.client import GcoreClient, RateGate, RetryPolicy
from exporter.config import ConfigError, Settings
from exporter.demo import DEMO_API_KEY, DemoWorld, animate
from exporter.fakeapi import FakeGcore
from exporter.fetcher import NO_TARGETS, Fetcher
from exporter.image_store import ImageStore
from exporter.keys import KeyFile, KeySource
from exporter.logs import set_level
from exporter.scheduler import Scheduler
from exporter.snapshot import Publisher
from exporter.task_cache import TaskCache
from exporter.telemetry import Telemetry
from exporter.vocabulary import Targets
from exporter.web import create_app

log = structlog.get_logger("exporter.runtime")


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the poller fetches from, with what key, and what."""

    base_url: str
    api_key: SecretStr | KeySource
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
        yield Upstream(settings.base_url, api_key, settings.resolved_targets())


@dataclass(frozen=True, slots=True)
class Monitor:
    """The parts that exist before any I/O: what scrapes read until polling has begun."""

    telemetry: Telemetry
    store: ImageStore
    publisher: Publisher


def new_monitor(settings: Settings, wall_clock: Callable[[], float] = time.time) -> Monitor:
    telemetry = Telemetry()
    publisher = Publisher(lambda: store.rendered(), telemetry.registry)
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
    *,
    gate: RateGate | None = None,
    previous: Targets = NO_TARGETS,
) -> AsyncIterator[Scheduler]:
    """A scheduler with its own HTTP session, feeding `monitor`; not yet running.

    `previous` are the targets of the scheduler this one replaces (a reload) and `gate` its
    rate-limit gate: a pause after a 429 outlives the replacement.
    """
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
            gate=gate,
        )
        telemetry.rate_limit_paused.set_function(lambda: int(client.gate.remaining > 0))
        tasks = TaskCache(
            client.get_task,
            ttl=settings.interval,
            on_failure=lambda error: telemetry.task_fetch_errors.labels(error.reason).inc(),
        )
        fetcher = Fetcher(client, store=monitor.store, tasks=tasks, telemetry=telemetry)
        fetcher.register(upstream.targets, previous)
        yield Scheduler(
            fetcher,
            upstream.targets,
            store=monitor.store,
            publisher=monitor.publisher,
            telemetry=telemetry,
            interval=settings.interval,
            wall_clock=wall_clock,
        )


RESTART_ONLY: Final = ("listen", "log_format")
"""Settings a reload does not change: the socket is bound and the log handler installed."""


def _reloadable(settings: Settings) -> dict[str, Any]:
    """What a reload applies, as it takes effect (the demo's targets are its own)."""
    targets = settings.resolved_targets()
    return {
        # order is no change: targets listed anew in another order need no new scheduler
        "targets": None if settings.demo else (set(targets.images), set(targets.scopes)),
        "interval": settings.interval,
        "timeout": settings.timeout,
        "concurrency": settings.concurrency,
        "stale_after": settings.effective_stale_after,
        "log_level": settings.log_level,
    }


_IN_PLACE: Final = frozenset({"stale_after", "log_level"})
"""Reloadable settings that need no new scheduler."""


class Polling:
    """Polling for the life of the process, across reloads of the configuration.

    The monitor (image store, publisher, telemetry) lives as long as this object. A reload that
    changes targets, interval, timeout or concurrency stops the scheduler and its HTTP session and
    starts new ones (a round at once), so images that stay keep their series without a gap and
    images no target covers any more leave /metrics. The rate-limit gate is never replaced.
    """

    def __init__(
        self, settings: Settings, api_key: SecretStr | KeySource | None, monitor: Monitor
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self._api_key = api_key
        self._gate = RateGate()
        self._lasting = AsyncExitStack()  # the upstream and the key file's watcher
        self._running = AsyncExitStack()  # the scheduler, its session and its task
        self._upstream: Upstream | None = None
        self._scheduler: Scheduler | None = None
        self._switching = asyncio.Lock()

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler running now: a reload replaces it."""
        if self._scheduler is None:
            raise RuntimeError("polling has not started")
        return self._scheduler

    async def __aenter__(self) -> Polling:
        try:
            stack = self._lasting
            self._upstream = await stack.enter_async_context(
                upstream_for(self.settings, self._api_key)
            )
            if isinstance(self._api_key, KeyFile):
                stack.push_async_callback(_cancel, asyncio.create_task(self._api_key.watch()))
            await self._start(self.settings, NO_TARGETS)
        except BaseException:
            await self._lasting.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        async with self._switching:
            await self._running.aclose()
            await self._lasting.aclose()

    async def reload_from(self, load: Callable[[], Settings]) -> bool:
        """Load settings (off the event loop) and apply them; a refused file changes nothing."""
        try:
            settings = await asyncio.to_thread(load)
        except ConfigError as exc:
            log.error(
                "configuration refused, the running one stays",
                config=str(self.settings.config) if self.settings.config else None,
                problems=exc.problems,
            )
            return False
        return await self.reload(settings)

    async def reload(self, settings: Settings) -> bool:
        """Apply what `settings` change of the reloadable settings; True if anything changed."""
        async with self._switching:
            old = self.settings
            ignored = [n for n in RESTART_ONLY if getattr(settings, n) != getattr(old, n)]
            if ignored:
                log.warning("configuration needs a restart to apply", settings=ignored)
            before, after = _reloadable(old), _reloadable(settings)
            changed = [name for name in after if after[name] != before[name]]
            self.settings = settings.model_copy(update={n: getattr(old, n) for n in RESTART_ONLY})
            set_level(settings.log_level)
            self.monitor.store.stale_after = settings.effective_stale_after
            if not _IN_PLACE.issuperset(changed):
                previous = self.scheduler.targets
                await self._running.aclose()
                await self._start(settings, previous)
            log.info(
                "configuration reloaded",
                changed=changed,
                images=len(self.monitor.store),
            )
            return bool(changed)

    async def _start(self, settings: Settings, previous: Targets) -> None:
        assert self._upstream is not None
        upstream = self._upstream
        if not settings.demo:
            upstream = dataclasses.replace(upstream, targets=settings.resolved_targets())
        stack = AsyncExitStack()
        try:
            scheduler = await stack.enter_async_context(
                open_scheduler(settings, upstream, self.monitor, gate=self._gate, previous=previous)
            )
            stack.push_async_callback(_cancel, asyncio.create_task(scheduler.run()))
        except BaseException:
            await stack.aclose()
            raise
        self._running, self._scheduler = stack, scheduler


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


POLLING = web.AppKey("polling", Polling)


def create_daemon(settings: Settings, api_key: SecretStr | KeySource | None) -> web.Application:
    """The HTTP app with polling started and stopped through its `cleanup_ctx`."""
    monitor = new_monitor(settings)
    app = create_app(monitor.publisher)
    polling = Polling(settings, api_key, monitor)
    app[POLLING] = polling

    async def run_polling(app: web.Application) -> AsyncIterator[None]:
        async with polling:
            yield

    app.cleanup_ctx.append(run_polling)
    return app
