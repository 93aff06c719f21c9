"""Scheduler rounds over a controlled wall clock, against the fake API over loopback."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from pydantic import SecretStr
from support.clock import Clock
from support.exporter import no_backoff
from support.exposition import Samples, parse_samples, value
from support.fake_api import API_KEY

from exporter.config.settings import load_settings
from exporter.daemon.wiring import Monitor, Upstream, new_monitor, open_scheduler
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.gcore.client import GcoreClient
from exporter.metrics.exposition import render
from exporter.metrics.image_store import ImageStore
from exporter.polling.fetcher import RENDER_EVERY
from exporter.polling.scheduler import Scheduler
from exporter.vocabulary import ImageKey, Scope, Targets

SCOPE = Scope(1, 2)
KEY = ImageKey(SCOPE, "d00d0000-0000-4000-8000-000000000001")


class Running:
    def __init__(self, scheduler: Scheduler, monitor: Monitor) -> None:
        self.scheduler = scheduler
        self.monitor = monitor

    def scrape(self) -> Samples:
        return parse_samples(render(self.monitor.publisher.current, openmetrics=False).decode())


Start = Callable[[Targets, Clock], Awaitable[Running]]


@pytest.fixture
async def start(fake_url: str) -> AsyncIterator[Start]:
    """`running = await start(targets, clock)`: a scheduler whose rounds the test starts."""
    async with AsyncExitStack() as stack:

        async def started(targets: Targets, clock: Clock) -> Running:
            settings = load_settings(
                demo=True, interval=60, stale_after=300, timeout=2, concurrency=4
            )
            monitor = new_monitor(settings, wall_clock=clock)
            upstream = Upstream(fake_url, SecretStr(API_KEY), targets)
            scheduler = await stack.enter_async_context(
                open_scheduler(settings, upstream, monitor, wall_clock=clock, retry=no_backoff)
            )
            return Running(scheduler, monitor)

        yield started


async def test_values_outlive_failures_until_stale_after_then_go(
    fake: FakeGcore, start: Start
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "keeper"))
    clock = Clock()
    running = await start(Targets((KEY,), ()), clock)
    await running.scheduler.run_once()
    fake.inject("/images/", 500, times=None)

    clock.now += 299
    await running.scheduler.run_once()
    s = running.scrape()
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) == 0
    assert value(s, "gcore_gpu_image_info", image_id=KEY.image_id, name="keeper") == 1
    assert value(s, "gcore_gpu_image_last_error_info", reason="server_error") == 1

    clock.now += 2  # 301 s since the last success
    await running.scheduler.run_once()
    s = running.scrape()
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) == 0
    assert value(s, "gcore_gpu_image_info", image_id=KEY.image_id) is None
    assert value(s, "gcore_gpu_image_fetch_errors_total", reason="server_error") == 2
    assert value(s, "gcore_gpu_image_last_success_timestamp_seconds") == 1_800_000_000.0


async def test_discovered_images_keep_values_while_listing_fails(
    fake: FakeGcore, start: Start
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "listed"))
    clock = Clock()
    running = await start(Targets((), (SCOPE,)), clock)
    await running.scheduler.run_once()
    fake.inject(r"/images\?", 503, times=None)
    clock.now += 60
    result = await running.scheduler.run_once()
    s = running.scrape()
    assert result.failed == 1
    assert value(s, "gcore_gpu_image_info", image_id=KEY.image_id, name="listed") == 1
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) == 0
    assert value(s, "gcore_gpu_image_fetch_errors_total", reason="server_error") == 1
    assert value(s, "gcore_exporter_discovery_up") == 0


async def test_lock_age_counts_from_first_sight_without_task_answer(
    fake: FakeGcore, start: Start
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "locked", task_id="t-unknown"))
    clock = Clock()
    running = await start(Targets((KEY,), ()), clock)
    await running.scheduler.run_once()  # the task is unknown to the Tasks API: 404
    clock.now += 600
    await running.scheduler.run_once()
    s = running.scrape()
    assert value(s, "gcore_gpu_image_lock_age_seconds") == 600
    fake.update_image(1, 2, KEY.image_id, task_id="t-other")
    clock.now += 60
    await running.scheduler.run_once()
    assert value(running.scrape(), "gcore_gpu_image_lock_age_seconds") == 0  # a new lock


async def test_age_follows_the_clock(fake: FakeGcore, start: Start) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "aging", created_at="2027-01-15T08:00:00"))
    clock = Clock()  # 2027-01-15T08:00:00Z
    running = await start(Targets((KEY,), ()), clock)
    await running.scheduler.run_once()
    assert value(running.scrape(), "gcore_gpu_image_age_seconds") == 0
    clock.now += 3600
    await running.scheduler.run_once()
    assert value(running.scrape(), "gcore_gpu_image_age_seconds") == 3600


async def test_wait_for_rounds_returns_after_n_rounds(fake: FakeGcore, start: Start) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "x"))
    running = await start(Targets((KEY,), ()), Clock())
    for _ in range(3):
        running.scheduler.start_round()
    await running.scheduler.wait_for_rounds(3)
    assert running.scheduler.rounds_completed == 3
    assert running.monitor.publisher.current.ready


async def test_unexpected_error_costs_one_fetch_not_the_loop(
    fake: FakeGcore, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "x"))
    running = await start(Targets((KEY,), ()), Clock())

    async def broken(key: ImageKey) -> None:
        raise RuntimeError("bug")

    with monkeypatch.context() as patch:
        patch.setattr(GcoreClient, "get_image", broken)
        result = await running.scheduler.run_once()
    assert (result.ok, result.failed) == (0, 1)
    s = running.scrape()
    assert value(s, "gcore_gpu_image_last_error_info", reason="invalid_response") == 1
    assert (await running.scheduler.run_once()).ok == 1


async def test_set_targets_polls_new_targets_next_round_and_drops_old_ones_at_once(
    fake: FakeGcore, start: Start
) -> None:
    other = ImageKey(SCOPE, "d00d0000-0000-4000-8000-000000000002")
    fake.put_image(1, 2, make_image(KEY.image_id, "first"))
    fake.put_image(1, 2, make_image(other.image_id, "second"))
    running = await start(Targets((KEY,), ()), Clock())
    await running.scheduler.run_once()
    running.scheduler.set_targets(Targets((other,), ()))
    await running.monitor.publisher.publish()
    s = running.scrape()
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) is None  # gone at once
    assert value(s, "gcore_gpu_image_up", image_id=other.image_id) == 0  # not fetched yet
    assert (await running.scheduler.run_once()).ok == 1
    assert value(running.scrape(), "gcore_gpu_image_info", name="second") == 1


class Cycle:
    """Garbage only a full collection frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


async def test_a_round_leaves_the_collector_to_the_process_and_then_calls_its_policy(
    fake: FakeGcore, fake_url: str
) -> None:
    """The scheduler freezes nothing itself (a cycle it outlived is collected), and calls
    `after_round` once per round, once the round is published."""
    fake.put_image(1, 2, make_image(KEY.image_id, "keeper"))
    settings = load_settings(demo=True, interval=60, stale_after=300, timeout=2, concurrency=4)
    published: list[bool] = []

    def after_round() -> None:
        samples = parse_samples(render(monitor.publisher.current, openmetrics=False).decode())
        published.append(value(samples, "gcore_gpu_image_up", image_id=KEY.image_id) == 1)

    monitor = new_monitor(settings, after_round=after_round)
    upstream = Upstream(fake_url, SecretStr(API_KEY), Targets((KEY,), ()))
    async with open_scheduler(settings, upstream, monitor) as scheduler:
        gc.unfreeze()  # what earlier tests froze
        gc.disable()  # no automatic collection may free the cycle before a round could freeze it
        try:
            leak = Cycle()
            freed = weakref.ref(leak)
            del leak
            await scheduler.run_once()
            await scheduler.run_once()
            gc.collect()
            assert freed() is None
        finally:
            gc.enable()
    assert published == [True, True]


async def test_a_listing_lets_the_loop_run_between_every_few_images_it_renders(
    fake: FakeGcore, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape waits for one stretch of poll work at most: a page of 1,000 images is rendered
    `RENDER_EVERY` images at a time, with a turn of the event loop in between."""
    for n in range(1000):
        fake.put_image(1, 2, make_image(f"d00d0000-0000-4000-8000-{n:012d}", f"i{n}"))
    running = await start(Targets((), (SCOPE,)), Clock())
    rendered = since_a_turn = most = 0
    succeeded = ImageStore.succeeded

    def counted(store: ImageStore, *args: object, **kwargs: object) -> None:
        nonlocal rendered, since_a_turn, most
        rendered, since_a_turn = rendered + 1, since_a_turn + 1
        most = max(most, since_a_turn)
        succeeded(store, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageStore, "succeeded", counted)

    async def turns() -> None:  # runs at every turn the poll gives the loop
        nonlocal since_a_turn
        while True:
            since_a_turn = 0
            await asyncio.sleep(0)

    probe = asyncio.create_task(turns())
    try:
        await running.scheduler.run_once()
    finally:
        probe.cancel()
    assert rendered == 1000
    assert most == RENDER_EVERY
