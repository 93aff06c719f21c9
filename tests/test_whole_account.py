"""Whole-account coverage: wildcard targets, bare metal, discovery refreshes, failed image tasks,
richer lock details and time in status. The whole exporter against the fake API over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs
from support.clock import NOW, Clock
from support.exporter import ExporterFactory, no_backoff
from support.exposition import Samples, parse_samples, series, value
from support.fake_api import API_KEY
from support.waiting import wait_until

from exporter.config.settings import load_settings
from exporter.daemon.wiring import Monitor, Upstream, new_monitor, open_poller
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region, make_task
from exporter.metrics.exposition import render
from exporter.polling.cadences import Poller
from exporter.polling.failed_tasks import LOOKBACK
from exporter.polling.task_feed import TaskFeed
from exporter.vocabulary import Scope

A = "a0000000-0000-4000-8000-00000000000a"  # project 1, region 10, virtual
B = "b0000000-0000-4000-8000-00000000000b"  # project 2, region 10, virtual
C = "c0000000-0000-4000-8000-00000000000c"  # project 1, region 20, virtual
D = "d0000000-0000-4000-8000-00000000000d"  # project 2, region 20, bare metal
E = "e0000000-0000-4000-8000-00000000000e"  # project 1, region 20, bare metal
FLAGLESS = "40000000-0000-4000-8000-000000000040"  # project 1, region 40 (flags say no GPU)
HIDDEN = "f0000000-0000-4000-8000-00000000000f"  # where no wildcard looks


def account(fake: FakeGcore) -> None:
    """Two projects (and a deleted one), regions 10 (GPU), 20 (GPU and bare metal), 30 (claims
    GPU, answers 404), 40 (flags say no GPU, yet it serves virtual images), 50 (GPU, in
    maintenance). Bare metal answers 404 in 10 and 30."""
    fake.projects = [
        make_project(1, "alpha"),
        make_project(2, "beta"),
        make_project(3, "gone", state="DELETED"),
    ]
    fake.regions = [
        make_region(10, "Luxembourg-2"),
        make_region(20, "Santa Clara-1", baremetal=True),
        make_region(30, "Frankfurt-3"),
        make_region(40, "No GPU", gpu=False),
        make_region(50, "Resting", state="MAINTENANCE", baremetal=True),
    ]
    fake.unserved = {("virtual", 30), ("baremetal", 10), ("baremetal", 30)}
    fake.put_image(1, 10, make_image(A, "a"))
    fake.put_image(2, 10, make_image(B, "b"))
    fake.put_image(1, 20, make_image(C, "c"))
    fake.put_image(2, 20, make_image(D, "d"), kind="baremetal")
    fake.put_image(1, 20, make_image(E, "e"), kind="baremetal")
    fake.put_image(1, 40, make_image(FLAGLESS, "served where the flags say no GPU"))
    for project, region in ((1, 50), (3, 10)):
        fake.put_image(project, region, make_image(HIDDEN, "hidden"))


def images(s: Samples) -> set[str]:
    return {ls["image_id"] for ls in series(s, "gcore_gpu_image_up")}


def up(s: Samples, endpoint: str, **labels: str) -> float | None:
    return value(s, "gcore_exporter_discovery_up", endpoint=endpoint, **labels)


def scopes(s: Samples) -> dict[str, float | None]:
    return {
        state: value(s, "gcore_exporter_scopes", state=state)
        for state in ("ok", "failing", "unavailable")
    }


def ts(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- target forms --------------------------------------------------------------------------------


async def test_star_probes_every_active_region_of_every_active_project(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    async with exporter(targets=["*", "baremetal:*"]) as running:
        s = await running.samples()
    assert images(s) == {A, B, C, D, E, FLAGLESS}  # region 40's flags say no: it serves anyway
    assert value(s, "gcore_gpu_image_info", image_id=A, kind="virtual") == 1
    assert value(s, "gcore_gpu_image_info", image_id=D, project_id="2", kind="baremetal") == 1
    # 2 projects x (10, 20, 30, 40) x 2 kinds; 404: virtual in 30, bare metal in 10 and 30
    assert scopes(s) == {"ok": 10, "failing": 0, "unavailable": 6}
    assert up(s, "images", project_id="1", region_id="30", kind="virtual") == 1
    assert up(s, "images", project_id="2", region_id="20", kind="baremetal") == 1
    assert [up(s, e, project_id="", region_id="", kind="") for e in ("projects", "regions")] == [
        1,
        1,
    ]
    assert value(s, "gcore_gpu_project_info", project_id="1", project_name="alpha") == 1
    assert value(s, "gcore_gpu_project_info", project_id="3", project_name="gone") == 1
    region = {"region_name": "Santa Clara-1", "slug": "santa-clara-1", "zone": "EMEA"}
    assert value(s, "gcore_gpu_region_info", region_id="20", country="", **region) == 1
    assert fake.count(r"^/cloud/v1/projects\?limit=1000&offset=0$") == 1
    assert fake.count(r"^/cloud/v1/regions\?limit=1000&offset=0$") == 1
    assert fake.count(r"/gpu/virtual/3/|/50/images") == 0  # deleted project, region resting
    assert fake.count(r"/images/") == 0  # listings only


async def test_project_star_and_region_star(fake: FakeGcore, exporter: ExporterFactory) -> None:
    account(fake)
    async with exporter(targets=["1/*", "*/40"]) as running:
        s = await running.samples()
    assert images(s) == {A, C, FLAGLESS}  # 1/10, 1/20 and 1/40, whatever its flags say
    assert up(s, "images", project_id="1", region_id="30") == 1  # 1/* finds 30: no service there
    assert up(s, "images", project_id="2", region_id="40") == 1  # */40: every project
    assert scopes(s) == {"ok": 4, "failing": 0, "unavailable": 1}


async def test_baremetal_forms_use_the_baremetal_paths(
    fake: FakeGcore, exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    account(fake)
    monkeypatch.setenv("GCORE_CLOUD_PROJECT_ID", "2")
    monkeypatch.setenv("GCORE_CLOUD_REGION_ID", "20")
    async with exporter(targets=["baremetal:1/20", f"baremetal:{D}"]) as running:
        s = await running.samples()
    assert images(s) == {D, E}
    assert value(s, "gcore_gpu_image_info", image_id=E, kind="baremetal") == 1
    assert value(s, "gcore_gpu_image_up", image_id=D, project_id="2", region_id="20") == 1
    assert fake.count(r"^/cloud/v3/gpu/baremetal/1/20/images\?") == 1
    assert fake.count(f"^/cloud/v3/gpu/baremetal/2/20/images/{D}$") == 1
    assert fake.count(r"/gpu/virtual/") == 0
    assert fake.count(r"/cloud/v1/(projects|regions)") == 0  # no wildcard: no discovery calls


async def test_explicit_image_inside_a_discovered_scope_is_polled_through_the_listing(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    async with exporter(targets=["*", f"1/10/{A}"]) as running:
        fake.remove_image(1, 10, A)
        await running.round()
        s = await running.samples()
    assert fake.count(r"/images/") == 0
    assert A not in images(s)  # left with the listing, like any discovered image


async def test_one_image_listed_by_both_services_is_exported_once(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    fake.put_image(1, 20, make_image(C, "c as bare metal"), kind="baremetal")
    async with exporter(targets=["1/20", "baremetal:1/20"]) as running:
        await running.round()
        s = await running.samples()  # parse_samples fails on duplicate series
    # kept under the service whose listing came first: the two listings race, so either
    (kept,) = series(s, "gcore_gpu_image_info", image_id=C)
    assert (kept["kind"], kept["name"]) in {("virtual", "c"), ("baremetal", "c as bare metal")}
    assert value(s, "gcore_gpu_image_info", image_id=E, kind="baremetal") == 1


async def test_odd_project_and_region_names_cannot_break_the_scrape(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    fake.projects[0]["name"] = 'lone \ud800 "quoted"\nname'
    async with exporter(targets=["1/*"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_project_info", project_id="1") == 1
    assert series(s, "gcore_gpu_project_info", project_id="1")[0]["project_name"].startswith(
        "lone ? "
    )


# --- refreshes and failures ----------------------------------------------------------------------


async def test_refresh_adds_scopes_from_the_next_round_and_removes_them_at_once(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    keep = fake.regions[:1]  # region 10 only
    everything, fake.regions = fake.regions, keep
    async with exporter(targets=["*"]) as running:
        assert images(await running.samples()) == {A, B}
        fake.regions = everything
        assert await running.refresh()
        s = await running.samples()
        assert images(s) == {A, B}  # 20, 30 and 40 wait for the next round
        assert up(s, "images", project_id="1", region_id="10") == 1  # known scopes keep theirs
        await running.round()
        assert images(await running.samples()) == {A, B, C, FLAGLESS}
        fake.regions = [r for r in everything if r["id"] != 10]
        assert await running.refresh()
        s = await running.samples()  # no round needed
    assert images(s) == {C, FLAGLESS}
    assert up(s, "images", region_id="10") is None
    assert scopes(s) == {"ok": 4, "failing": 0, "unavailable": 2}


async def test_scope_removed_while_its_listing_is_in_flight_does_not_come_back(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    async with exporter(targets=["*"]) as running:
        release = asyncio.Event()
        body = {"count": 1, "results": [make_image(A, "late")]}
        fake.inject(r"/gpu/virtual/1/10/images\?", 200, body=body, hold=release)
        late = running.scheduler.start_round()
        await wait_until(lambda: fake.count(r"/1/10/images\?") == 2, what="the held listing")
        fake.projects = fake.projects[1:]  # project 1 is gone
        assert await running.refresh()
        release.set()
        await asyncio.wait_for(late, 10)
        s = await running.samples()
    assert images(s) == {B}


@pytest.mark.parametrize("endpoint", ["projects", "regions"])
@pytest.mark.parametrize("status", [500, 403])
async def test_failed_account_listing_keeps_the_last_known_set(
    fake: FakeGcore, exporter: ExporterFactory, endpoint: str, status: int
) -> None:
    account(fake)
    async with exporter(targets=["*"], timeout="1s") as running:
        fake.inject(f"^/cloud/v1/{endpoint}", status, times=None)
        setattr(fake, endpoint, [])  # what a failure must not be taken for
        assert not await running.refresh()
        await running.round()
        s = await running.samples()
    assert images(s) == {A, B, C, FLAGLESS}
    assert up(s, endpoint, project_id="", region_id="", kind="") == 0
    other = "regions" if endpoint == "projects" else "projects"
    assert up(s, other) == 1


@pytest.mark.parametrize("endpoint", ["projects", "regions"])
async def test_an_invalid_project_or_region_fails_the_listing_rather_than_dropping_scopes(
    fake: FakeGcore, exporter: ExporterFactory, endpoint: str
) -> None:
    account(fake)
    async with exporter(targets=["*"]) as running:
        del getattr(fake, endpoint)[0]["id"]
        assert not await running.refresh()
        s = await running.samples()
    assert up(s, endpoint) == 0
    assert value(s, "gcore_exporter_invalid_items_total", endpoint=endpoint) == 1
    assert A in images(s)


async def test_discovery_that_fails_at_start_finds_nothing_until_it_works(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    fault = fake.inject("^/cloud/v1/projects", 401, times=None)
    async with exporter(targets=["*"]) as running:
        assert images(await running.samples()) == set()
        assert up(await running.samples(), "projects") == 0
        fake.faults.remove(fault)
        assert await running.refresh()
        await running.round()
        s = await running.samples()
    assert images(s) == {A, B, C, FLAGLESS}


async def test_404_is_unavailable_when_discovered_and_an_error_when_configured(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    with capture_logs() as logs:
        async with exporter(targets=["1/*", "2/30"]) as running:
            second = await running.round()
            s = await running.samples()
    # 1/10, 1/20 and 1/40 vs 2/30; 1/30 (no service) rests until the next discovery
    assert (second.ok, second.failed, second.resting) == (3, 1, 1)
    assert up(s, "images", project_id="1", region_id="30") == 1
    assert up(s, "images", project_id="2", region_id="30") == 0
    assert scopes(s) == {"ok": 3, "failing": 1, "unavailable": 1}
    unavailable = [e for e in logs if e["event"].startswith("no GPU image service")]
    assert [(e["project_id"], e["region_id"]) for e in unavailable] == [(1, 30)]  # once


# --- failed image tasks --------------------------------------------------------------------------


def failed(task_id: str, finished: float | None, **fields: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "project_id": 1,
        "region_id": 10,
        "created_on": ts((finished or 1_800_000_000.0) - 60),
        "finished_on": ts(finished) if finished is not None else None,
        "error": "download failed",
    }
    return make_task(task_id, "ERROR", **({"task_type": "download_image"} | defaults | fields))


async def test_failed_image_tasks_appear_with_their_error_and_image(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    now = NOW
    long_error = "E" * 300
    fake.put_task(failed("t-1", now - 600, created_resources={"images": ["img-new"]}))
    fake.put_task(failed("t-2", now - 300, error=long_error, project_id=2, region_id=20))
    fake.put_task(failed("t-3", now - 300, task_type="create_vm"))  # not an image task
    fake.put_task(failed("t-4", now - 300, region_id=20))  # 1/20 is not watched
    fake.put_task(failed("t-5", None, updated_on=ts(now - 120)))
    fake.put_task(make_task("t-6", "FINISHED", "download_image", project_id=1, region_id=10))
    async with exporter(targets=["1/10", "baremetal:2/20"]) as running:
        assert await running.poll_tasks()
        s = await running.samples()
    when = "gcore_gpu_image_task_failed_timestamp_seconds"
    assert {ls["task_id"] for ls in series(s, when)} == {"t-1", "t-2", "t-5"}
    assert value(s, when, task_id="t-1", image_id="img-new", task_type="download_image") == int(
        now - 600
    )
    assert value(s, when, task_id="t-5", image_id="") == int(now - 120)  # updated_on
    (info,) = series(s, "gcore_gpu_image_task_failed_info", task_id="t-2")
    assert info["project_id"] == "2"
    assert len(info["error"]) == 200
    assert up(s, "tasks", project_id="", region_id="", kind="") == 1
    listing = [r for r in fake.requests if r.startswith("/cloud/v1/tasks?")][-1]
    assert "state=" not in listing  # every state: the feed serves more than failures
    assert "project_id=1&project_id=2&region_id=10&region_id=20" in listing
    assert "limit=1000" in listing


async def test_failed_tasks_are_paged_and_deduplicated(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    fake.max_page = 2
    now = NOW
    async with exporter(targets=["1/10"]) as running:
        await wait_until(lambda: fake.count(r"^/cloud/v1/tasks\?") == 1, what="the first poll")
        for n in range(5):
            fake.put_task(failed(f"t-{n}", now - 60 * n))
        before = fake.count(r"^/cloud/v1/tasks\?")
        assert await running.poll_tasks()
        s = await running.samples()
    assert fake.count(r"^/cloud/v1/tasks\?") - before == 3
    assert len(series(s, "gcore_gpu_image_task_failed_info")) == 5


async def test_image_task_pattern_decides_and_each_new_type_is_logged_once(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    now = NOW
    fake.put_task(failed("t-1", now - 60, task_type="upload_gpu_thing"))
    fake.put_task(failed("t-2", now - 60, task_type="download_image"))
    fake.put_task(failed("t-3", now - 60, task_type="upload_gpu_thing"))
    with capture_logs() as logs:
        async with exporter(targets=["1/10"], image_task_pattern="^upload_") as running:
            assert await running.poll_tasks()
            s = await running.samples()
    kept = {ls["task_id"] for ls in series(s, "gcore_gpu_image_task_failed_info")}
    assert kept == {"t-1", "t-3"}
    seen = [(e["task_type"], e["image_task"]) for e in logs if e["event"] == "task type seen"]
    assert sorted(seen) == [("download_image", False), ("upload_gpu_thing", True)]


async def test_failed_tasks_listing_keeps_the_last_known_set(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    fake.put_task(failed("t-1", NOW - 60))
    async with exporter(targets=["1/10"], timeout="1s") as running:
        fake.inject(r"^/cloud/v1/tasks\?", 500, times=None)
        assert not await running.poll_tasks()
        s = await running.samples()
    assert up(s, "tasks") == 0
    assert value(s, "gcore_gpu_image_task_failed_info", task_id="t-1") == 1


# --- lock details --------------------------------------------------------------------------------


async def test_finished_task_still_holding_a_lock_is_reported_with_its_error(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    task = make_task(
        "t-lock",
        "ERROR",
        "download_image",
        created_on="",
        finished_on="2026-01-06T09:30:00",
        updated_on="not a time",
        error="x" * 250,
    )
    fake.put_task(task)
    fake.update_image(1, 10, A, task_id="t-lock", status="queued")
    async with exporter(targets=["1/10"]) as running:
        s = await running.samples()
    (info,) = series(s, "gcore_gpu_image_task_info", image_id=A)
    assert (info["task_state"], len(info["task_error"])) == ("ERROR", 200)
    finished = datetime(2026, 1, 6, 9, 30, tzinfo=UTC).timestamp()
    assert value(s, "gcore_gpu_image_lock_task_finished_timestamp_seconds", image_id=A) == finished
    errors = [v for (n, _), v in s.items() if n == "gcore_exporter_task_fetch_errors_total"]
    assert errors and not any(errors)  # "" is no invalid answer


async def test_running_task_has_no_finished_timestamp(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    fake.put_task(make_task("t-run", "RUNNING", "download_image"))
    fake.update_image(1, 10, A, task_id="t-run")
    async with exporter(targets=["1/10"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_task_info", image_id=A, task_error="") == 1
    assert series(s, "gcore_gpu_image_lock_task_finished_timestamp_seconds") == []


# --- with a clock the test moves -----------------------------------------------------------------


class Running:
    def __init__(self, poller: Poller, monitor: Monitor) -> None:
        self.poller = poller
        self.monitor = monitor

    def scrape(self) -> Samples:
        return parse_samples(render(self.monitor.publisher.current, openmetrics=False).decode())


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(fake_url: str) -> AsyncIterator[Start]:
    """`running = await start(targets, clock, **settings)`: a poller the test drives."""
    async with AsyncExitStack() as stack:

        async def started(targets: list[str], clock: Clock, **options: Any) -> Running:
            settings = load_settings(demo=True, targets=targets, interval=60, timeout=2, **options)
            monitor = new_monitor(settings, wall_clock=clock)
            upstream = Upstream(fake_url, SecretStr(API_KEY), settings.resolved_targets())
            poller = await stack.enter_async_context(
                open_poller(settings, upstream, monitor, wall_clock=clock, retry=no_backoff)
            )
            return Running(poller, monitor)

        yield started


async def test_failed_tasks_leave_when_the_window_has_passed(fake: FakeGcore, start: Start) -> None:
    clock = Clock()
    window = 3600.0
    fake.put_task(failed("t-old", clock.now - 1800))
    fake.put_task(failed("t-new", clock.now - 60))
    running = await start(["1/10"], clock, failed_task_window="1h")
    assert await running.poller.once()
    when = "gcore_gpu_image_task_failed_timestamp_seconds"
    assert {ls["task_id"] for ls in series(running.scrape(), when)} == {"t-old", "t-new"}
    clock.now += window - 1800 + 1  # t-old finished just over an hour ago
    fake.inject(r"^/cloud/v1/tasks\?", 500, times=None)  # even without a working poll
    assert not await running.poller.poll_tasks()
    assert {ls["task_id"] for ls in series(running.scrape(), when)} == {"t-new"}
    clock.now += 1800
    await running.poller.poll_tasks()
    assert series(running.scrape(), when) == []


async def test_task_without_end_time_counts_from_first_sight(fake: FakeGcore, start: Start) -> None:
    clock = Clock()
    fake.put_task(failed("t-1", None, updated_on="", created_on=ts(clock.now - 7200)))
    running = await start(["1/10"], clock, failed_task_window="1h")
    await running.poller.poll_tasks()
    when = "gcore_gpu_image_task_failed_timestamp_seconds"
    assert value(running.scrape(), when, task_id="t-1") == clock.now
    first = clock.now
    clock.now += 1800
    await running.poller.poll_tasks()
    assert value(running.scrape(), when, task_id="t-1") == first
    clock.now += 1801
    await running.poller.poll_tasks()
    assert value(running.scrape(), when, task_id="t-1") is None


async def test_tasks_are_asked_for_since_a_day_before_the_window(
    fake: FakeGcore, start: Start
) -> None:
    clock = Clock()
    created = clock.now - 3600 - LOOKBACK + 60  # a long task that failed a minute ago
    fake.put_task(failed("t-long", clock.now - 60, created_on=ts(created)))
    fake.put_task(failed("t-older", clock.now - 60, created_on=ts(created - 120)))
    running = await start(["1/10"], clock, failed_task_window="1h")
    await running.poller.poll_tasks()
    kept = {ls["task_id"] for ls in series(running.scrape(), "gcore_gpu_image_task_failed_info")}
    assert kept == {"t-long"}
    assert fake.count(f"from_timestamp={ts(clock.now - 3600 - LOOKBACK)}&") == 1


async def test_status_since_is_updated_at_at_first_sight_then_when_a_change_was_seen(
    fake: FakeGcore, start: Start
) -> None:
    clock = Clock()
    fake.put_image(1, 10, make_image(A, "a", status="queued", updated_at=ts(clock.now - 500)))
    fake.put_image(1, 10, make_image(B, "future", updated_at=ts(clock.now + 3600)))
    running = await start(["1/10"], clock)
    await running.poller.once()
    since = "gcore_gpu_image_status_since_timestamp_seconds"
    assert value(running.scrape(), since, image_id=A) == clock.now - 500
    assert value(running.scrape(), since, image_id=B) == clock.now  # never later than now
    clock.now += 60
    await running.poller.scheduler.run_once()
    assert value(running.scrape(), since, image_id=A) == clock.now - 560  # unchanged
    clock.now += 60
    seen = clock.now
    fake.update_image(1, 10, A, status="active", updated_at=ts(clock.now - 30))
    await running.poller.scheduler.run_once()
    clock.now += 60
    await running.poller.scheduler.run_once()
    assert value(running.scrape(), since, image_id=A) == seen


async def test_status_since_restarts_from_updated_at_after_the_values_were_withdrawn(
    fake: FakeGcore, start: Start
) -> None:
    clock = Clock()
    fake.put_image(1, 10, make_image(A, "a", updated_at=ts(clock.now - 500)))
    running = await start([f"1/10/{A}"], clock, stale_after="2m")
    await running.poller.once()
    fake.remove_image(1, 10, A)
    await running.poller.scheduler.run_once()  # 404: values withdrawn
    fake.put_image(1, 10, make_image(A, "a", status="queued", updated_at=ts(clock.now - 100)))
    clock.now += 60
    await running.poller.scheduler.run_once()
    since = "gcore_gpu_image_status_since_timestamp_seconds"
    assert value(running.scrape(), since, image_id=A) == clock.now - 160


async def test_a_malformed_task_is_skipped_and_counted_and_the_others_are_used(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    account(fake)
    no_state = failed("t-1", NOW - 60)
    del no_state["state"]
    no_id = failed("t-2", NOW - 60)
    del no_id["id"]
    fake.put_task(no_state)
    fake.tasks["no-id"] = no_id
    fake.put_task(failed("t-3", NOW - 30))
    invalid = "gcore_exporter_invalid_items_total"
    async with exporter(targets=["1/10"]) as running:
        await wait_until(lambda: fake.count(r"^/cloud/v1/tasks\?") == 1, what="the first poll")
        before = value(await running.samples(), invalid, endpoint="tasks")
        assert await running.poll_tasks()
        s = await running.samples()
    assert up(s, "tasks") == 1
    kept = {ls["task_id"] for ls in series(s, "gcore_gpu_image_task_failed_info")}
    assert kept == {"t-3"}
    assert value(s, invalid, endpoint="tasks") == (before or 0) + 2


async def test_projects_and_regions_are_paged(fake: FakeGcore, exporter: ExporterFactory) -> None:
    account(fake)
    fake.max_page = 2
    async with exporter(targets=["*"]):
        pass
    assert fake.count(r"^/cloud/v1/projects\?") == 2  # 3 projects
    assert fake.count(r"^/cloud/v1/regions\?") == 3  # 5 regions


async def test_discovery_and_task_polls_repeat_on_their_own_cadence(
    fake: FakeGcore, exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    account(fake)
    calls = 0
    real_poll = TaskFeed.poll

    async def poll_that_breaks_once(self: TaskFeed, scopes: Iterable[Scope]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")  # costs one poll, not the loop
        return await real_poll(self, scopes)

    monkeypatch.setattr(TaskFeed, "poll", poll_that_breaks_once)
    options = {"discovery_interval": "50ms", "task_interval": "50ms"}
    async with exporter(targets=["*"], **options):
        await wait_until(lambda: fake.count(r"^/cloud/v1/regions\?") >= 3, what="refreshes")
        await wait_until(lambda: fake.count(r"^/cloud/v1/tasks\?") >= 2, what="task polls")
    assert fake.count(r"^/cloud/v1/projects\?") >= 3
