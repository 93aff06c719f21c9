"""Wires settings into running parts: the upstream (Gcore or the demo), the monitor that outlives
every poller, and the poller (discovery, image rounds, failed tasks) with its own HTTP session.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from urllib.parse import unquote

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from exporter import __version__
from exporter.config.keys import KeySource
from exporter.config.settings import Settings, cluster_interval, proxy_address
from exporter.demo.fake_gcore import FakeGcore
from exporter.demo.world import DEMO_API_KEY, TARGETS, DemoWorld, animate
from exporter.gcore.client import GcoreClient
from exporter.gcore.transport import Proxy, RateGate, RetryPolicy, Transport
from exporter.metrics.image_store import ImageStore
from exporter.metrics.scope_health import ScopeHealth
from exporter.metrics.selection import Selection, selected_registry
from exporter.metrics.snapshot import Publisher
from exporter.metrics.task_outcomes import OutcomeTally
from exporter.metrics.telemetry import Telemetry
from exporter.polling.cadences import Poller
from exporter.polling.clusters import Clusters, watched_scopes
from exporter.polling.discovery import Discovery
from exporter.polling.failed_tasks import LOOKBACK, FailedTasks
from exporter.polling.fetcher import NO_TARGETS, Fetcher
from exporter.polling.scheduler import Scheduler
from exporter.polling.scope_cadence import ScopeCadence
from exporter.polling.task_cache import TaskCache
from exporter.polling.task_feed import TaskFeed
from exporter.polling.task_outcomes import TaskOutcomes, watched_pairs
from exporter.vocabulary import Endpoint, Scope, Targets

log = structlog.get_logger(__name__)


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


def proxy_of(settings: Settings) -> Proxy | None:
    """The configured proxy (`--proxy-url`), else None: the environment's then apply."""
    if settings.proxy_url is None:
        return None
    return Proxy(*proxy_address(settings.proxy_url))


def proxy_credentials(settings: Settings) -> list[str]:
    """`USER:PASSWORD` of the configured and the environment's proxies, as written and decoded:
    for the log redactor, which keeps them out of every line."""
    urls = [*urllib.request.getproxies().values()]
    if settings.proxy_url is not None:
        urls.append(settings.proxy_url.get_secret_value())
    found = []
    for text in urls:
        userinfo, at, _ = text.partition("://")[2].split("/", 1)[0].rpartition("@")
        if at and userinfo:
            found.append(userinfo)
            user, _, password = userinfo.partition(":")
            found.append(f"{unquote(user)}:{unquote(password)}")
    return found


@dataclass(frozen=True, slots=True)
class Monitor:
    """What outlives every poller (a reload replaces the poller): what scrapes read."""

    telemetry: Telemetry
    store: ImageStore
    publisher: Publisher
    scopes: ScopeHealth
    outcomes: TaskOutcomes  # what image tasks were counted: never twice, even across reloads
    after_round: Callable[[], None] = lambda: None  # the process's memory policy, per round


def selection_of(settings: Settings) -> Selection:
    """The families and tag keys exported: fixed for the life of the process (see RESTART_ONLY)."""
    keys = settings.tag_keys
    return Selection(
        settings.metric_allowlist,
        settings.metric_denylist,
        None if keys is None else frozenset(keys),
    )


def new_monitor(
    settings: Settings,
    wall_clock: Callable[[], float] = time.time,
    after_round: Callable[[], None] = lambda: None,
) -> Monitor:
    telemetry = Telemetry(shard=settings.shard_assignment())
    selection = selection_of(settings)
    shown = selection.shown()
    publisher = Publisher(lambda: store.lines(), selected_registry(telemetry.registry, selection))
    store = ImageStore(
        stale_after=settings.effective_stale_after,
        clock=wall_clock,
        on_change=publisher.mark_dirty,
        shown=shown,
    )
    telemetry.images.set_function(lambda: len(store))
    outcomes = TaskOutcomes(OutcomeTally(telemetry.registry))
    scopes = ScopeHealth(telemetry, wall_clock)
    return Monitor(telemetry, store, publisher, scopes, outcomes, after_round)


RetryFor = Callable[[Settings], RetryPolicy]


def retry_policy(settings: Settings) -> RetryPolicy:
    """The daemon's retries: the transport's attempts and back-off, none started after an interval
    (the next round asks again)."""
    return RetryPolicy(budget=settings.interval)


@asynccontextmanager
async def open_poller(
    settings: Settings,
    upstream: Upstream,
    monitor: Monitor,
    wall_clock: Callable[[], float] = time.time,
    *,
    gate: RateGate | None = None,
    previous: Poller | None = None,
    retry: RetryFor = retry_policy,
) -> AsyncIterator[Poller]:
    """Discovery, scheduler and failed-task poll with their own HTTP session, feeding `monitor`;
    not yet running, its targets registered and published.

    `previous` is the poller this one replaces (a reload): its discovered scopes and failed tasks
    are taken over, so images that stay keep their series without a gap. `gate` is its rate-limit
    gate: a pause after a 429 outlives the replacement. `retry` makes the retry policy of
    `settings` (tests of failures hand in one without back-off).
    """
    telemetry = monitor.telemetry
    async with aiohttp.ClientSession(
        headers={"User-Agent": f"gcore-gpu-image-exporter/{__version__}"},
        connector=aiohttp.TCPConnector(limit=settings.concurrency),
        trust_env=True,  # HTTPS_PROXY, HTTP_PROXY and NO_PROXY, as every HTTP client
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
                retry=retry(settings),
                gate=gate,
                proxy=proxy_of(settings),
            ),
            on_invalid=_invalid_item(telemetry),
        )
        telemetry.rate_limit_paused.set_function(lambda: int(client.gate.remaining > 0))
        tasks = TaskCache(
            client.get_task,
            ttl=settings.interval,
            on_failure=lambda error: telemetry.task_fetch_errors.labels(error.reason).inc(),
        )
        cadence = ScopeCadence(
            interval=settings.interval,
            relist_after=settings.discovery_interval,
            telemetry=telemetry,
            clock=wall_clock,
        )
        fetcher = Fetcher(
            client,
            store=monitor.store,
            tasks=tasks,
            scopes=monitor.scopes,
            cadence=cadence,
            shard=telemetry.shard,
        )
        discovery = Discovery(
            client,
            upstream.targets,
            telemetry=telemetry,
            registry=telemetry.registry,
            on_change=lambda targets: scheduler.set_targets(with_clusters(targets)),
            clock=wall_clock,
        )
        failed_tasks = FailedTasks(
            registry=telemetry.registry,
            pattern=settings.image_task_pattern,
            window=settings.failed_task_window,
            keep_acknowledged=settings.keep_acknowledged_tasks,
            clock=wall_clock,
        )
        feed = TaskFeed(
            client,
            telemetry=telemetry,
            lookback=settings.failed_task_window + LOOKBACK,
            clock=wall_clock,
        )
        feed.subscribe(failed_tasks.take)
        feed.subscribe(cadence.take)
        feed.subscribe(
            monitor.outcomes.subscriber(
                pattern=settings.image_task_pattern,
                lookback=settings.failed_task_window + LOOKBACK,
                watched=lambda: watched_pairs(discovery.targets),
            )
        )
        clusters = new_clusters(settings, client, monitor, cadence, wall_clock)

        def with_clusters(targets: Targets) -> Targets:
            return targets if clusters is None else clusters.extend(targets)

        try:
            if previous is not None:
                discovery.adopt(previous.discovery)
                failed_tasks.adopt(previous.failed_tasks)
                cadence.adopt(previous.scheduler.cadence)
                adopt_clusters(clusters, previous.clusters, watched_scopes(discovery.targets))
            before = previous.scheduler.targets if previous is not None else NO_TARGETS
            fetcher.register(with_clusters(discovery.targets), before)
            scheduler = Scheduler(
                fetcher,
                with_clusters(discovery.targets),
                store=monitor.store,
                publish_round=lambda: poller.publish(ready=True),
                telemetry=telemetry,
                interval=settings.interval,
                workers=settings.concurrency,
                wall_clock=wall_clock,
                after_round=monitor.after_round,
            )
            poller = Poller(
                scheduler,
                discovery,
                failed_tasks,
                feed,
                publisher=monitor.publisher,
                discovery_interval=settings.discovery_interval,
                task_interval=settings.effective_task_interval,
                clusters=clusters,
                cluster_interval=cluster_interval(settings),
            )
            await poller.publish()
            yield poller
        finally:
            discovery.close()
            failed_tasks.close()
            if clusters is not None:
                clusters.close()


def new_clusters(
    settings: Settings,
    client: GcoreClient,
    monitor: Monitor,
    cadence: ScopeCadence,
    wall_clock: Callable[[], float],
) -> Clusters | None:
    """The cluster poll feeding `monitor`, unless `--no-clusters`; its calls follow the image
    listings' `cadence`."""
    if not settings.clusters:
        return None
    telemetry = monitor.telemetry
    return Clusters(
        client,
        store=monitor.store,
        telemetry=telemetry,
        registry=telemetry.registry,
        shard=telemetry.shard,
        cadence=cadence,
        interval=cluster_interval(settings),
        clock=wall_clock,
    )


def adopt_clusters(
    clusters: Clusters | None, previous: Clusters | None, scopes: set[Scope]
) -> None:
    """A reload keeps what the clusters poll knew of `scopes`, or drops its series if it is
    turned off."""
    if previous is not None and clusters is not None:
        clusters.adopt(previous, scopes)
    elif previous is not None:
        previous.retire()


def _invalid_item(telemetry: Telemetry) -> Callable[[Endpoint, str | None, str], None]:
    """Count each item of a listing that failed validation; log those no fetch logs (a shard
    logs only its own invalid images, where it uses them)."""

    def invalid(endpoint: Endpoint, item_id: str | None, problem: str) -> None:
        telemetry.item_invalid(endpoint, item_id, problem)
        if endpoint != "images":
            log.warning("invalid item skipped", endpoint=endpoint, id=item_id, problem=problem)

    return invalid


@asynccontextmanager
async def open_scheduler(
    settings: Settings,
    upstream: Upstream,
    monitor: Monitor,
    wall_clock: Callable[[], float] = time.time,
    *,
    retry: RetryFor = retry_policy,
) -> AsyncIterator[Scheduler]:
    """A scheduler of explicit targets with its own HTTP session, feeding `monitor`; not yet
    running (wildcards need the poller's discovery)."""
    async with open_poller(settings, upstream, monitor, wall_clock, retry=retry) as poller:
        yield poller.scheduler
