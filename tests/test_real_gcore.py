"""What the real Gcore API does that a naive client misses: capability flags that mislead, one
malformed task, timestamps in the future, acknowledged failures, upper-case ids, `x-should-retry`,
and an API budget spent on scopes that hold nothing. The exporter against the fake API over
loopback."""

from __future__ import annotations

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

from exporter.config.settings import load_settings
from exporter.daemon.wiring import Monitor, Upstream, new_monitor, open_poller
from exporter.demo.fake_clusters import make_virtual_cluster
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region, make_task
from exporter.metrics.exposition import render
from exporter.polling.cadences import Poller
from exporter.polling.scheduler import RoundResult

IMG = "a1b2c3d4-0000-4000-8000-0000000000ab"
FAILED = "gcore_gpu_image_task_failed_timestamp_seconds"
LISTINGS = r"^/cloud/v3/gpu/\w+/\d+/\d+/images\?"
CLUSTER = "c1000000-0000-4000-8000-000000000001"
CLUSTER_LISTINGS = r"^/cloud/v3/gpu/\w+/\d+/\d+/clusters\?"


def ts(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def image_id(n: int) -> str:
    return f"5ca1ab1e-0000-4000-8000-{n:012d}"


def sparse_account(fake: FakeGcore, projects: int, regions: int, with_images: int) -> None:
    """`projects` x `regions` x 2 kinds, the first `with_images` scopes (virtual) holding an
    image; every region's flags say it has no GPU, and bare metal answers 404 in odd regions."""
    fake.projects = [make_project(p, f"p{p}") for p in range(1, projects + 1)]
    fake.regions = [make_region(r, f"r{r}", gpu=False) for r in range(1, regions + 1)]
    fake.unserved = {("baremetal", r) for r in range(1, regions + 1, 2)}
    pairs = [(p, r) for p in range(1, projects + 1) for r in range(1, regions + 1)]
    for n, (p, r) in enumerate(pairs[:with_images]):
        fake.put_image(p, r, make_image(image_id(n), f"img-{n}"))


class Driven:
    """A poller whose rounds, task polls and clock the test drives."""

    def __init__(self, poller: Poller, monitor: Monitor, fake: FakeGcore, clock: Clock) -> None:
        self.poller, self.monitor, self.fake, self.clock = poller, monitor, fake, clock

    def scrape(self) -> Samples:
        return parse_samples(render(self.monitor.publisher.current, openmetrics=False).decode())

    async def listings_of_a_round(self) -> tuple[int, RoundResult]:
        """Image listings requested by one round, and the round's result."""
        before = self.fake.count(LISTINGS)
        result = await self.poller.scheduler.run_once()
        return self.fake.count(LISTINGS) - before, result

    async def cluster_listings(self) -> int:
        """Cluster listings requested by one cluster poll."""
        before = self.fake.count(CLUSTER_LISTINGS)
        assert await self.poller.poll_clusters()
        return self.fake.count(CLUSTER_LISTINGS) - before


Start = Callable[..., Awaitable[Driven]]


@pytest.fixture
async def start(fake: FakeGcore, fake_url: str) -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def started(targets: list[str], **options: Any) -> Driven:
            clock = Clock()
            settings = load_settings(
                demo=True, targets=targets, interval=60, discovery_interval=600, **options
            )
            monitor = new_monitor(settings, wall_clock=clock)
            upstream = Upstream(fake_url, SecretStr(API_KEY), settings.resolved_targets())
            poller = await stack.enter_async_context(
                open_poller(settings, upstream, monitor, wall_clock=clock)
            )
            await poller.refresh()
            return Driven(poller, monitor, fake, clock)

        yield started


# --- economy: API calls follow the images ---------------------------------------------------


async def test_a_sparse_account_lists_empty_scopes_only_at_the_discovery_interval(
    fake: FakeGcore, start: Start
) -> None:
    sparse_account(fake, projects=3, regions=4, with_images=2)
    driven = await start(["*", "baremetal:*"])
    first, result = await driven.listings_of_a_round()
    assert (first, result.resting) == (24, 0)  # every scope probed: 3 x 4 x 2
    for _ in range(5):  # ten minutes of rounds: only the scopes with images
        driven.clock.now += 60
        calls, result = await driven.listings_of_a_round()
        assert (calls, result.resting) == (2, 22)
    driven.clock.now += 600 - 5 * 60  # the discovery interval since the first listing
    again, _ = await driven.listings_of_a_round()
    assert again == 24
    s = driven.scrape()
    assert {ls["image_id"] for ls in series(s, "gcore_gpu_image_up")} == {image_id(0), image_id(1)}
    cadence = "gcore_exporter_scope_cadence"
    assert value(s, cadence, cadence="images") == 2
    assert value(s, cadence, cadence="empty") == 3 * 4 + 3 * 2 - 2  # virtual and even bare metal
    assert value(s, cadence, cadence="unavailable") == 3 * 2  # bare metal in regions 1 and 3
    every = "gcore_exporter_scope_listing_interval_seconds"
    assert [value(s, every, cadence=c) for c in ("images", "failing", "empty", "unavailable")] == [
        60,
        60,
        600,
        600,
    ]


async def test_an_image_task_wakes_an_empty_scope_and_its_image_shows_within_a_round(
    fake: FakeGcore, start: Start
) -> None:
    sparse_account(fake, projects=2, regions=2, with_images=1)
    driven = await start(["*"])
    await driven.listings_of_a_round()
    assert await driven.poller.poll_tasks()
    calls, _ = await driven.listings_of_a_round()
    assert calls == 1
    new = image_id(99)
    fake.put_image(2, 2, make_image(new, "uploaded", status="queued"))
    where = {"created_on": ts(NOW), "project_id": 2}
    fake.put_task(make_task("t-up", "RUNNING", "download_image", region_id=2, **where))
    fake.put_task(make_task("t-del", "RUNNING", "delete_image", region_id=1, **where))
    driven.clock.now += 60
    assert await driven.poller.poll_tasks()
    calls, _ = await driven.listings_of_a_round()
    assert calls == 2  # the scope with an image, and 2/2 woken (a delete wakes nothing)
    assert fake.count(r"/virtual/2/2/images\?") == 2
    assert value(driven.scrape(), "gcore_gpu_image_up", image_id=new) == 1
    driven.clock.now += 60
    assert await driven.poller.poll_tasks()  # the same task in the same state: no news
    calls, _ = await driven.listings_of_a_round()
    assert calls == 2  # 2/2 now holds an image: every round


async def test_the_clusters_of_resting_scopes_rest_with_their_images(
    fake: FakeGcore, start: Start
) -> None:
    """Clusters are listed every interval where images are (2 scopes) or clusters were found
    (3/4, on an image from elsewhere); in empty and unavailable scopes at the discovery interval,
    or at once when an image task wakes the scope."""
    sparse_account(fake, projects=3, regions=4, with_images=2)
    fake.clusters.put("virtual", 3, 4, make_virtual_cluster(CLUSTER, "elsewhere", None))
    driven = await start(["*", "baremetal:*"])
    await driven.listings_of_a_round()
    assert await driven.cluster_listings() == 24  # every scope once: the probe
    assert await driven.poller.poll_tasks()
    for _ in range(4):
        driven.clock.now += 60
        await driven.listings_of_a_round()
        assert await driven.cluster_listings() == 3
    where = {"created_on": ts(NOW), "project_id": 2}
    fake.put_task(make_task("t-up", "RUNNING", "create_image", region_id=2, **where))
    driven.clock.now += 60
    assert await driven.poller.poll_tasks()
    await driven.listings_of_a_round()  # the woken scopes' images: still none
    assert await driven.cluster_listings() == 3 + 2  # 2/2, virtual and bare metal, woken
    assert fake.count(r"/baremetal/2/2/clusters\?") == 2
    driven.clock.now += 60
    await driven.listings_of_a_round()
    assert await driven.cluster_listings() == 3  # woken once, listed once
    driven.clock.now += 600 - 6 * 60  # the discovery interval since the first listing
    await driven.listings_of_a_round()
    assert await driven.cluster_listings() == 24 - 2  # 2/2's were listed 5 minutes ago


# --- regions: flags are hints, the listing is the truth -------------------------------------


async def test_an_unavailable_scope_rests_until_the_next_discovery(
    fake: FakeGcore, start: Start
) -> None:
    fake.projects = [make_project(1, "p")]
    fake.regions = [make_region(5, "claims gpu, serves none", gpu=True, baremetal=True)]
    fake.unserved = {("virtual", 5)}
    driven = await start(["*"])
    first, _ = await driven.listings_of_a_round()
    driven.clock.now += 60
    second, result = await driven.listings_of_a_round()
    assert (first, second, result.resting) == (1, 0, 1)
    assert value(driven.scrape(), "gcore_exporter_scopes", state="unavailable") == 1
    driven.clock.now += 600
    third, _ = await driven.listings_of_a_round()
    assert third == 1


async def test_region_info_carries_slug_zone_and_country_when_sent(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.projects = [make_project(1, "p")]
    fake.regions = [
        make_region(10, "Luxembourg-2", country="LU"),
        make_region(20, "Old", zone=None),
    ]
    del fake.regions[1]["slug"]
    async with exporter(targets=["*"]) as running:
        s = await running.samples()
    info = "gcore_gpu_region_info"
    assert value(s, info, region_id="10", slug="luxembourg-2", zone="EMEA", country="LU") == 1
    assert value(s, info, region_id="20", region_name="Old", slug="", zone="", country="") == 1


# --- tasks ----------------------------------------------------------------------------------


def failed(task_id: str, **fields: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "project_id": 1,
        "region_id": 10,
        "created_on": ts(NOW - 120),
        "finished_on": ts(NOW - 60),
        "error": "download failed",
    }
    fields = defaults | fields
    return make_task(task_id, "ERROR", fields.pop("task_type", "download_image"), **fields)


async def test_a_finish_in_the_future_is_clamped_to_now(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(1, 10, make_image(IMG, "x"))
    fake.put_task(failed("t-future", finished_on=ts(NOW + 86400 * 365)))
    fake.put_task(failed("t-later", finished_on=None, updated_on=ts(NOW + 3600)))
    async with exporter(targets=["1/10"]) as running:
        assert await running.poll_tasks()
        s = await running.samples()
    assert value(s, FAILED, task_id="t-future") == NOW
    assert value(s, FAILED, task_id="t-later") == NOW


async def test_acknowledged_failures_leave_unless_kept_with_a_label(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(1, 10, make_image(IMG, "x"))
    fake.put_task(failed("t-seen", acknowledged_at=ts(NOW - 30), acknowledged_by=7))
    fake.put_task(failed("t-news"))
    async with exporter(targets=["1/10"]) as running:
        assert await running.poll_tasks()
        default = await running.samples()
    async with exporter(targets=["1/10"], keep_acknowledged_tasks=True) as running:
        assert await running.poll_tasks()
        kept = await running.samples()
    assert [ls["task_id"] for ls in series(default, FAILED)] == ["t-news"]
    assert "acknowledged" not in series(default, FAILED)[0]
    assert value(kept, FAILED, task_id="t-seen", acknowledged="true") == NOW - 60
    assert value(kept, FAILED, task_id="t-news", acknowledged="false") == NOW - 60


async def test_the_default_pattern_keeps_image_tasks_with_their_type(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(1, 10, make_image(IMG, "x"))
    for task_type in ("create_image", "download_image", "delete_image", "upload_virtual_image"):
        fake.put_task(failed(f"t-{task_type}", task_type=task_type))
    for task_type in ("create_vm", "image_cache_sync", "delete_image_later"):
        fake.put_task(failed(f"t-{task_type}", task_type=task_type))
    async with exporter(targets=["1/10"]) as running:
        assert await running.poll_tasks()
        s = await running.samples()
    types = {ls["task_type"] for ls in series(s, FAILED)}
    assert types == {"create_image", "download_image", "delete_image", "upload_virtual_image"}


# --- ids and retries ------------------------------------------------------------------------


async def test_an_upper_case_image_id_is_the_same_image_shown_as_gcore_sends_it(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(1, 10, make_image(IMG, "x"))
    async with exporter(targets=[f"1/10/{IMG.upper()}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", image_id=IMG) == 1
    assert series(s, "gcore_gpu_image_up", image_id=IMG.upper()) == []
    assert fake.count(f"/images/{IMG}$") == 1


async def test_an_image_gcore_sends_in_upper_case_is_still_the_one_asked_for(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.images[(1, 10)] = {IMG: make_image(IMG.upper(), "x")}
    async with exporter(targets=[f"1/10/{IMG}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", image_id=IMG) == 1


@pytest.mark.parametrize(
    ("status", "said", "requests", "up"),
    [
        (503, "false", 1, 0),  # retryable, but the server says a retry will not help
        (404, "true", 2, 1),  # not retryable, but the server says try again
        (503, "maybe", 2, 1),  # anything else: the status decides
    ],
)
async def test_x_should_retry_overrides_the_retry_decision(
    fake: FakeGcore,
    exporter: ExporterFactory,
    status: int,
    said: str,
    requests: int,
    up: int,
) -> None:
    fake.put_image(1, 10, make_image(IMG, "x"))
    async with exporter(targets=[f"1/10/{IMG}"]) as running:
        before = fake.count(f"/images/{IMG}$")
        fake.inject(f"/images/{IMG}$", status, headers={"x-should-retry": said})
        await running.round()
        s = await running.samples()
    assert fake.count(f"/images/{IMG}$") - before == requests
    assert value(s, "gcore_gpu_image_up", image_id=IMG) == up


async def test_an_invalid_image_in_a_listing_is_counted_by_endpoint(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(1, 10, make_image(IMG, "x"))
    fake.put_image(1, 10, {"id": "no-name-or-status"})
    async with exporter(targets=["1/10"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", image_id=IMG) == 1
    counted = "gcore_exporter_invalid_items_total"
    assert value(s, counted, endpoint="images") == 1
    assert value(s, counted, endpoint="tasks") == 0
