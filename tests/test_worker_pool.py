"""Many explicit ids: a round's tasks grow with the concurrency, and in-flight targets are skipped.

Answers are held by the fake (`hold=`), so every count is taken while the round provably waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from pydantic import SecretStr
from support.fake_api import API_KEY
from support.waiting import wait_until

from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_scheduler
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.polling.scheduler import Scheduler
from exporter.vocabulary import ImageKey, Scope, Targets

SCOPE = Scope(3, 9)
CONCURRENCY = 4


def keys(count: int) -> tuple[ImageKey, ...]:
    return tuple(ImageKey(SCOPE, f"1d000000-0000-4000-8000-{n:012d}") for n in range(count))


Start = Callable[[Targets], Awaitable[Scheduler]]


@pytest.fixture
async def start(fake: FakeGcore, fake_url: str) -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def started(targets: Targets) -> Scheduler:
            for key in targets.images:
                fake.put_image(SCOPE.project_id, SCOPE.region_id, make_image(key.image_id, "x"))
            settings = load_settings(demo=True, interval=60, timeout=30, concurrency=CONCURRENCY)
            upstream = Upstream(fake_url, SecretStr(API_KEY), targets)
            return await stack.enter_async_context(
                open_scheduler(settings, upstream, new_monitor(settings))
            )

        yield started


async def test_a_round_of_many_ids_runs_on_as_many_tasks_as_the_concurrency(
    fake: FakeGcore, start: Start
) -> None:
    scheduler = await start(Targets(keys(500), ()))
    idle = len(asyncio.all_tasks())
    release = asyncio.Event()
    fake.inject("/images/", 200, hold=release, times=None, body=make_image("any", "x"))
    round_ = scheduler.start_round()
    await wait_until(lambda: fake.in_flight == CONCURRENCY, what="the round to fill its slots")
    # the round, its workers, and the fake's server side of each request in flight
    assert len(asyncio.all_tasks()) - idle <= 1 + 3 * CONCURRENCY
    release.set()
    result = await asyncio.wait_for(round_, 30)
    assert (result.ok + result.failed, result.skipped) == (500, 0)


async def test_a_round_skips_every_id_an_earlier_round_has_not_finished(
    fake: FakeGcore, start: Start
) -> None:
    scheduler = await start(Targets(keys(20), ()))
    release = asyncio.Event()
    fake.inject("/images/", 200, hold=release, times=CONCURRENCY, body=make_image("any", "x"))
    first = scheduler.start_round()
    await wait_until(lambda: fake.in_flight == CONCURRENCY, what="the first round to be held")
    second = await asyncio.wait_for(scheduler.start_round(), 10)
    assert (second.ok, second.failed, second.skipped) == (0, 0, 20)  # taken or queued: all busy
    release.set()
    assert (await asyncio.wait_for(first, 30)).skipped == 0
    assert fake.count("/images/") == 20  # none fetched twice


async def test_a_cancelled_round_gives_back_the_ids_it_had_not_fetched(
    fake: FakeGcore, start: Start
) -> None:
    scheduler = await start(Targets(keys(20), ()))
    release = asyncio.Event()
    fake.inject("/images/", 200, hold=release, times=CONCURRENCY, body=make_image("any", "x"))
    cancelled = scheduler.start_round()
    await wait_until(lambda: fake.in_flight == CONCURRENCY, what="the round to be held")
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    release.set()
    result = await asyncio.wait_for(scheduler.run_once(), 30)
    assert (result.ok, result.skipped) == (20, 0)
