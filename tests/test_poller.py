"""Poller state over time, with a controlled wall clock, against the fake API over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import API_KEY, Samples, parse_samples, value
from pydantic import SecretStr

from exporter.client import GcoreClient
from exporter.config import ImageKey, Scope, Targets
from exporter.exposition import render
from exporter.fakeapi import FakeGcore, make_image
from exporter.poller import Poller
from exporter.telemetry import Telemetry

SCOPE = Scope(1, 2)
KEY = ImageKey(SCOPE, "d00d0000-0000-4000-8000-000000000001")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def make_poller(session: aiohttp.ClientSession, url: str, targets: Targets, clock: Clock) -> Poller:
    telemetry = Telemetry()
    client = GcoreClient(
        session, url, SecretStr(API_KEY), timeout=2, concurrency=4, telemetry=telemetry
    )
    return Poller(
        client, targets, interval=60, stale_after=300, telemetry=telemetry, wall_clock=clock
    )


def scrape(poller: Poller) -> Samples:
    return parse_samples(render(poller.snapshot, openmetrics=False).decode())


async def test_values_outlive_failures_until_stale_after_then_go(
    fake: FakeGcore, fake_url: str, session: aiohttp.ClientSession
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "keeper"))
    clock = Clock()
    poller = make_poller(session, fake_url, Targets((KEY,), ()), clock)
    await poller.run_once()
    fake.inject("/images/", 500, times=None)

    clock.now += 299
    await poller.run_once()
    s = scrape(poller)
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) == 0
    assert value(s, "gcore_gpu_image_info", image_id=KEY.image_id, name="keeper") == 1
    assert value(s, "gcore_gpu_image_last_error_info", reason="server_error") == 1

    clock.now += 2  # 301 s since the last success
    await poller.run_once()
    s = scrape(poller)
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) == 0
    assert value(s, "gcore_gpu_image_info", image_id=KEY.image_id) is None
    assert value(s, "gcore_gpu_image_fetch_errors_total", reason="server_error") == 2
    assert value(s, "gcore_gpu_image_last_success_timestamp_seconds") == 1_800_000_000.0


async def test_discovered_images_keep_values_while_listing_fails(
    fake: FakeGcore, fake_url: str, session: aiohttp.ClientSession
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "listed"))
    clock = Clock()
    poller = make_poller(session, fake_url, Targets((), (SCOPE,)), clock)
    await poller.run_once()
    fake.inject(r"/images\?", 503, times=None)
    clock.now += 60
    result = await poller.run_once()
    s = scrape(poller)
    assert result.failed == 1
    assert value(s, "gcore_gpu_image_info", image_id=KEY.image_id, name="listed") == 1
    assert value(s, "gcore_gpu_image_up", image_id=KEY.image_id) == 0
    assert value(s, "gcore_gpu_image_fetch_errors_total", reason="server_error") == 1
    assert value(s, "gcore_exporter_discovery_up") == 0


async def test_lock_age_counts_from_first_sight_without_task_answer(
    fake: FakeGcore, fake_url: str, session: aiohttp.ClientSession
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "locked", task_id="t-unknown"))
    clock = Clock()
    poller = make_poller(session, fake_url, Targets((KEY,), ()), clock)
    await poller.run_once()  # the task is unknown to the Tasks API: 404
    clock.now += 600
    await poller.run_once()
    s = scrape(poller)
    assert value(s, "gcore_gpu_image_lock_age_seconds") == 600
    fake.update_image(1, 2, KEY.image_id, task_id="t-other")
    clock.now += 60
    await poller.run_once()
    assert value(scrape(poller), "gcore_gpu_image_lock_age_seconds") == 0  # a new lock


async def test_age_follows_the_clock(
    fake: FakeGcore, fake_url: str, session: aiohttp.ClientSession
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "aging", created_at="2027-01-15T08:00:00"))
    clock = Clock()  # 2027-01-15T08:00:00Z
    poller = make_poller(session, fake_url, Targets((KEY,), ()), clock)
    await poller.run_once()
    assert value(scrape(poller), "gcore_gpu_image_age_seconds") == 0
    clock.now += 3600
    await poller.run_once()
    assert value(scrape(poller), "gcore_gpu_image_age_seconds") == 3600


async def test_wait_for_rounds_returns_after_n_rounds(
    fake: FakeGcore, fake_url: str, session: aiohttp.ClientSession
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "x"))
    poller = make_poller(session, fake_url, Targets((KEY,), ()), Clock())
    for _ in range(3):
        poller.start_round()
    await poller.wait_for_rounds(3)
    assert poller.rounds_completed == 3
    assert poller.snapshot.ready


async def test_unexpected_error_costs_one_fetch_not_the_loop(
    fake: FakeGcore, fake_url: str, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.put_image(1, 2, make_image(KEY.image_id, "x"))
    poller = make_poller(session, fake_url, Targets((KEY,), ()), Clock())

    async def broken(key: ImageKey) -> None:
        raise RuntimeError("bug")

    with monkeypatch.context() as patch:
        patch.setattr(GcoreClient, "get_image", broken)
        result = await poller.run_once()
    assert (result.ok, result.failed) == (0, 1)
    s = scrape(poller)
    assert value(s, "gcore_gpu_image_last_error_info", reason="invalid_response") == 1
    assert (await poller.run_once()).ok == 1
