"""The image pipeline's counters: each image task counted once, when first seen finished (never
twice across polls, pages, reloads, restarts or a window that grows), and the histogram of their
durations. The whole exporter against the fake API over loopback."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from support.clock import NOW, Clock
from support.exporter import ExporterFactory
from support.exposition import Samples, parse_samples, series, value
from support.fake_api import API_KEY
from support.waiting import wait_until as wait

from exporter.config.settings import load_settings
from exporter.daemon.lifecycle import POLLING
from exporter.daemon.wiring import Monitor, Upstream, new_monitor, open_poller
from exporter.demo.fake_gcore import FakeGcore, make_task
from exporter.demo.world import PIPELINE_EVERY, PIPELINE_FAILS, DemoWorld
from exporter.gcore.models import Task
from exporter.metrics.exposition import render
from exporter.metrics.task_outcomes import DURATION_BUCKETS
from exporter.polling.cadences import Poller
from exporter.polling.failed_tasks import LOOKBACK
from exporter.polling.task_outcomes import MARGIN, MAX_TASK_TYPES, OTHER_TYPE

SCOPE: dict[str, Any] = {"project_id": 1, "region_id": 10}
FINISHED = "gcore_gpu_image_tasks_finished_total"
DURATION = "gcore_gpu_image_task_duration_seconds"


def ts(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def task(
    task_id: str,
    state: str,
    created: float | None,
    finished: float | None = None,
    task_type: str = "download_image",
    **fields: Any,
) -> dict[str, Any]:
    return make_task(
        task_id,
        state,
        task_type,
        project_id=fields.pop("project_id", 1),
        region_id=fields.pop("region_id", 10),
        created_on=ts(created) if created is not None else None,
        finished_on=ts(finished) if finished is not None else None,
        **fields,
    )


def finished(s: Samples, **labels: str) -> float | None:
    return value(s, FINISHED, **{"project_id": "1", "region_id": "10", **labels})


class Running:
    def __init__(self, poller: Poller, monitor: Monitor, stack: AsyncExitStack) -> None:
        self.poller = poller
        self.monitor = monitor
        self.stop = stack.aclose  # as a reload stops the poller it replaces

    async def poll(self) -> Samples:
        """One poll of the Tasks feed, and the scrape that follows it."""
        assert await self.poller.poll_tasks()
        return parse_samples(render(self.monitor.publisher.current, openmetrics=False).decode())


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(fake_url: str) -> AsyncIterator[Start]:
    """`await start(targets, clock, monitor=None, **settings)`: a poller the test drives; a new
    monitor is a new process, the same monitor (once its poller is stopped) a reload."""
    async with AsyncExitStack() as pollers:

        async def started(
            targets: list[str], clock: Clock, monitor: Monitor | None = None, **options: Any
        ) -> Running:
            settings = load_settings(demo=True, targets=targets, interval=60, timeout=2, **options)
            monitor = monitor or new_monitor(settings, wall_clock=clock)
            upstream = Upstream(fake_url, SecretStr(API_KEY), settings.resolved_targets())
            stack = AsyncExitStack()
            pollers.push_async_callback(stack.aclose)
            poller = await stack.enter_async_context(
                open_poller(settings, upstream, monitor, wall_clock=clock)
            )
            return Running(poller, monitor, stack)

        yield started


async def test_a_task_counts_once_when_first_seen_finished(fake: FakeGcore, start: Start) -> None:
    clock = Clock()
    now = clock.now
    fake.put_task(task("t-history", "FINISHED", now - 900, now - 300))
    fake.put_task(task("t-upload", "RUNNING", now - 120, task_type="upload_virtual_image"))
    fake.put_task(task("t-vm", "ERROR", now - 120, now - 60, task_type="create_vm"))
    running = await start(["1/10", "2/20"], clock)
    s = await running.poll()
    # the baseline: what had finished is not news, yet every series is there at 0
    for pair in (("1", "10"), ("2", "20")):
        for task_type in ("create_image", "delete_image", "download_image"):
            for state in ("FINISHED", "ERROR"):
                labels = dict(zip(("project_id", "region_id"), pair, strict=True))
                assert value(s, FINISHED, **labels, task_type=task_type, state=state) == 0
    assert series(s, FINISHED, task_type="create_vm") == []
    clock.now += 60
    fake.tasks["t-upload"].update(state="FINISHED", finished_on=ts(clock.now))
    fake.put_task(task("t-new", "ERROR", clock.now - 30, clock.now, region_id=20, project_id=2))
    for _ in range(3):  # polled again and again, each is counted once
        s = await running.poll()
        assert finished(s, task_type="upload_virtual_image", state="FINISHED") == 1
        assert finished(s, task_type="upload_virtual_image", state="ERROR") == 0
        assert finished(s, task_type="download_image", state="FINISHED") == 0
        assert value(s, FINISHED, project_id="2", task_type="download_image", state="ERROR") == 1
        labels = {"project_id": "1", "task_type": "upload_virtual_image", "state": "FINISHED"}
        assert value(s, DURATION + "_count", **labels) == 1
        assert value(s, DURATION + "_sum", **labels) == 180


async def test_every_page_counts_and_none_twice(fake: FakeGcore, start: Start) -> None:
    clock = Clock()
    fake.max_page = 2
    running = await start(["1/10"], clock)
    await running.poll()
    for n in range(7):
        fake.put_task(task(f"t-{n}", "FINISHED", clock.now - 600, clock.now))
    before = fake.count(r"^/cloud/v1/tasks\?")
    s = await running.poll()
    assert fake.count(r"^/cloud/v1/tasks\?") - before == 4
    assert finished(s, task_type="download_image", state="FINISHED") == 7
    s = await running.poll()
    assert finished(s, task_type="download_image", state="FINISHED") == 7


async def test_the_histogram_observes_each_duration_and_counts_a_task_without_one(
    fake: FakeGcore, start: Start
) -> None:
    clock = Clock()
    now = clock.now
    running = await start(["1/10"], clock)
    await running.poll()
    durations = [30, 60, 61, 900, 7200, 30000]
    for n, seconds in enumerate(durations):
        fake.put_task(task(f"t-{n}", "ERROR", now - seconds, now))
    fake.put_task(task("t-no-end", "ERROR", now - 60, None))
    fake.put_task(task("t-backwards", "ERROR", now - 60, now - 120))  # untrusted times
    s = await running.poll()
    labels = {"task_type": "download_image", "state": "ERROR"}
    assert finished(s, **labels) == len(durations) + 2
    assert value(s, DURATION + "_count", **labels) == len(durations)
    assert value(s, DURATION + "_sum", **labels) == sum(durations)
    buckets = {
        ls["le"]: value(s, DURATION + "_bucket", **labels, le=ls["le"])
        for ls in series(s, DURATION + "_bucket", **labels)
    }
    expected = {repr(b): sum(d <= b for d in durations) for b in DURATION_BUCKETS}
    assert buckets == {**expected, "+Inf": len(durations)}
    assert buckets["60.0"] == 2  # `le` is inclusive


async def test_a_restart_does_not_count_again_what_had_finished(
    fake: FakeGcore, start: Start
) -> None:
    clock = Clock()
    first = await start(["1/10"], clock)
    await first.poll()
    fake.put_task(task("t-1", "FINISHED", clock.now - 600, clock.now))
    assert finished(await first.poll(), task_type="download_image", state="FINISHED") == 1
    restarted = await start(["1/10"], clock)  # a new process: a new monitor
    s = await restarted.poll()
    assert finished(s, task_type="download_image", state="FINISHED") == 0
    fake.put_task(task("t-2", "FINISHED", clock.now - 600, clock.now))
    assert finished(await restarted.poll(), task_type="download_image", state="FINISHED") == 1


async def test_a_reload_counts_nothing_twice_and_a_new_scope_starts_with_a_baseline(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    now = 1_800_000_000.0
    fake.put_task(task("t-1", "FINISHED", now - 600, now - 60))
    fake.put_task(task("t-other", "ERROR", now - 600, now - 60, project_id=1, region_id=11))
    async with exporter(targets=["1/10"]) as running:
        await wait(lambda: fake.count(r"^/cloud/v1/tasks\?") == 1, what="the first poll")
        fake.put_task(task("t-2", "FINISHED", now - 600, now))
        assert await running.poll_tasks()
        s = await running.samples()
        assert finished(s, task_type="download_image", state="FINISHED") == 1
        # finished between the last poll of the old poller and the first of the new one: news
        fake.put_task(task("t-between", "FINISHED", now - 600, now))
        polling = running.app[POLLING]
        settings = load_settings(interval="1h", listen="127.0.0.1:0", targets=["1/10", "1/11"])
        assert await polling.reload(settings)
        await asyncio.wait_for(polling.scheduler.wait_for_rounds(1), 10)
        assert await running.poll_tasks()
        s = await running.samples()
        assert finished(s, task_type="download_image", state="FINISHED") == 2
        assert value(s, FINISHED, region_id="11", task_type="download_image", state="ERROR") == 0
        fake.put_task(task("t-3", "ERROR", now - 600, now, project_id=1, region_id=11))
        assert await running.poll_tasks()
        s = await running.samples()
        assert value(s, FINISHED, region_id="11", task_type="download_image", state="ERROR") == 1
        assert finished(s, task_type="download_image", state="FINISHED") == 2


async def test_ids_are_forgotten_after_the_window_and_not_counted_when_listed_again(
    fake: FakeGcore, start: Start
) -> None:
    clock = Clock()
    window = 3600.0
    running = await start(["1/10"], clock, failed_task_window="1h")
    await running.poll()
    fake.put_task(task("t-1", "FINISHED", clock.now - 60, clock.now))
    assert finished(await running.poll(), task_type="download_image", state="FINISHED") == 1
    assert len(running.monitor.outcomes) == 1
    clock.now += window + LOOKBACK + 1  # no longer listed, but not yet forgotten
    await running.poll()
    assert len(running.monitor.outcomes) == 1
    clock.now += MARGIN
    await running.poll()
    assert len(running.monitor.outcomes) == 0
    # a longer window (a reload) lists it again: it is old news
    await running.stop()
    longer = await start(["1/10"], clock, monitor=running.monitor, failed_task_window="30d")
    s = await longer.poll()
    assert len(running.monitor.outcomes) == 1  # listed again, remembered again
    assert finished(s, task_type="download_image", state="FINISHED") == 1


def test_a_task_without_a_creation_time_is_remembered_while_listed() -> None:
    """Gcore may list a task without `created_on` for ever (no filter on creation can drop it):
    its id stays while it is listed, and goes once it is not."""
    outcomes = new_monitor(load_settings(demo=True)).outcomes
    timeless = Task(id="t-timeless", state="ERROR", task_type="download_image", **SCOPE)
    image = re.compile("image")
    for day in range(4):
        outcomes.take([timeless], NOW + day * 86400, pattern=image, lookback=60, pairs={(1, 10)})
        assert len(outcomes) == 1
    outcomes.take([], NOW + 5 * 86400, pattern=image, lookback=60, pairs={(1, 10)})
    assert len(outcomes) == 0


async def test_a_new_pattern_starts_a_new_baseline(fake: FakeGcore, start: Start) -> None:
    clock = Clock()
    fake.put_task(task("t-vm", "ERROR", clock.now - 600, clock.now, task_type="create_vm"))
    running = await start(["1/10"], clock)
    await running.poll()
    await running.stop()
    wider = await start(["1/10"], clock, monitor=running.monitor, image_task_pattern="image|vm")
    s = await wider.poll()
    assert finished(s, task_type="create_vm", state="ERROR") == 0
    fake.put_task(task("t-vm-2", "ERROR", clock.now - 600, clock.now, task_type="create_vm"))
    assert finished(await wider.poll(), task_type="create_vm", state="ERROR") == 1


async def test_task_types_are_bounded(fake: FakeGcore, start: Start) -> None:
    clock = Clock()
    running = await start(["1/10"], clock, image_task_pattern="^upload_")
    await running.poll()
    count = MAX_TASK_TYPES + 5
    for n in range(count):
        fake.put_task(task(f"t-{n}", "FINISHED", clock.now - 60, clock.now, f"upload_{n:02d}"))
    s = await running.poll()
    types = {ls["task_type"] for ls in series(s, FINISHED)}
    assert len(types) == MAX_TASK_TYPES + 1
    assert finished(s, task_type=OTHER_TYPE, state="FINISHED") == 5
    assert sum(v for (n, _), v in s.items() if n == FINISHED) == count


async def test_the_demo_ends_image_tasks_at_a_steady_rate_in_minutes(
    fake: FakeGcore, start: Start
) -> None:
    world = DemoWorld(fake)
    running = await start(["1/10", "2/10"], Clock(time.time()))
    await running.poll()
    ticks = 10 * PIPELINE_EVERY * PIPELINE_FAILS
    for _ in range(ticks):
        world.step()
    s = await running.poll()
    ended: dict[str, float] = {}  # the demo's other failures are download_image
    for (name, labels), count in s.items():
        if name == FINISHED and ("task_type", "create_image") in labels:
            state = dict(labels)["state"]
            ended[state] = ended.get(state, 0) + count
    ended_tasks = ticks // PIPELINE_EVERY
    failed = ended_tasks / 2 / PIPELINE_FAILS  # half are create_image
    assert ended == {"FINISHED": ended_tasks / 2 - failed, "ERROR": failed}
    for task_type in ("create_image", "download_image"):
        wanted = {("task_type", task_type), ("state", "FINISHED")}
        total = sum(v for (n, ls), v in s.items() if n == DURATION + "_sum" and wanted <= ls)
        count = sum(v for (n, ls), v in s.items() if n == DURATION + "_count" and wanted <= ls)
        assert count > 0
        assert 2 * 60 <= total / count <= 4 * 3600, task_type
