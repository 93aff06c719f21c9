"""Reloading the configuration in a running exporter: what changes, what stays, what is refused."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.exporter import ExporterFactory, RunningExporter
from support.exposition import Samples, series, value

from exporter.config.settings import ConfigError, Settings, load_settings
from exporter.daemon.lifecycle import POLLING, Polling
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region

P, R = 3, 5
A = "a0000000-0000-4000-8000-00000000000a"
B = "b0000000-0000-4000-8000-00000000000b"
X = "c0000000-0000-4000-8000-00000000000c"
Y = "d0000000-0000-4000-8000-00000000000d"
Z = "e0000000-0000-4000-8000-00000000000e"


def settings(**options: Any) -> Settings:
    """As the `exporter` fixture builds them: rounds are the test's to start."""
    return load_settings(
        **{"interval": "1h", "listen": "127.0.0.1:0", "clusters": False, **options}
    )


def polling_of(running: RunningExporter) -> Polling:
    return running.app[POLLING]


async def reload(running: RunningExporter, **options: Any) -> None:
    """Reload with `options` and wait for the first round of the new scheduler."""
    polling = polling_of(running)
    assert await polling.reload(settings(**options))
    await asyncio.wait_for(polling.scheduler.wait_for_rounds(1), 10)


@pytest.fixture(autouse=True)
def _restore_log_level() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture
def account(fake: FakeGcore) -> FakeGcore:
    """A and B listed in P/R; X in P/R+1; Y in P/R+2; Z in P/R+3."""
    fake.put_image(P, R, make_image(A, "a"))
    fake.put_image(P, R, make_image(B, "b"))
    fake.put_image(P, R + 1, make_image(X, "x"))
    fake.put_image(P, R + 2, make_image(Y, "y"))
    fake.put_image(P, R + 3, make_image(Z, "z"))
    return fake


def ids(samples: Samples, metric: str) -> set[str]:
    return {labels["image_id"] for labels in series(samples, metric)}


async def test_new_targets_replace_old_ones_and_images_that_stay_have_no_gap(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    first = [f"{P}/{R}", f"{P}/{R + 1}/{X}", f"{P}/{R + 2}/{Y}"]
    async with exporter(targets=first) as running:
        samples = await running.samples()
        assert ids(samples, "gcore_gpu_image_up") == {A, B, X, Y}
        assert value(samples, "gcore_exporter_discovery_up", region_id=str(R)) == 1
        listing = asyncio.Event()  # the new scheduler's listing waits until the test says
        account.inject(rf"/{P}/{R}/images\?", 500, hold=listing)
        try:
            polling = polling_of(running)
            assert await polling.reload(settings(targets=[f"{P}/{R}", f"{P}/{R + 3}/{Z}"]))
            samples = await running.samples()
            assert ids(samples, "gcore_gpu_image_info") == {A, B}  # kept while being re-fetched
            assert ids(samples, "gcore_gpu_image_up") == {A, B, Z}  # X and Y left
            assert value(samples, "gcore_gpu_image_up", image_id=A) == 1
            assert value(samples, "gcore_exporter_discovery_up", region_id=str(R)) == 1
        finally:
            listing.set()
        await asyncio.wait_for(polling.scheduler.wait_for_rounds(1), 10)
        assert value(await running.samples(), "gcore_gpu_image_up", image_id=Z) == 1


async def test_a_scope_no_longer_targeted_leaves_with_its_images(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=[f"{P}/{R}", f"{P}/{R + 1}"]) as running:
        assert ids(await running.samples(), "gcore_gpu_image_up") == {A, B, X}
        await polling_of(running).reload(settings(targets=[f"{P}/{R + 1}"]))
        samples = await running.samples()  # at once, before any new round
        assert ids(samples, "gcore_gpu_image_up") == {X}
        assert value(samples, "gcore_exporter_discovery_up", region_id=str(R)) is None
        assert value(samples, "gcore_exporter_discovery_up", region_id=str(R + 1)) == 1
        assert value(samples, "gcore_exporter_images") == 1


async def test_an_explicit_image_that_becomes_discovered_leaves_once_unlisted(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=[f"{P}/{R + 1}/{X}"]) as running:
        await reload(running, targets=[f"{P}/{R + 1}"])
        assert value(await running.samples(), "gcore_gpu_image_up", image_id=X) == 1
        account.remove_image(P, R + 1, X)
        await running.round()
        assert ids(await running.samples(), "gcore_gpu_image_up") == set()


async def test_a_discovered_image_that_becomes_explicit_is_kept_when_unlisted(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=[f"{P}/{R}"]) as running:
        await reload(running, targets=[f"{P}/{R}/{A}"])
        samples = await running.samples()
        assert ids(samples, "gcore_gpu_image_up") == {A}
        account.remove_image(P, R, A)
        await running.round()
        samples = await running.samples()
        assert value(samples, "gcore_gpu_image_up", image_id=A) == 0  # configured: always there
        assert value(samples, "gcore_gpu_image_last_error_info", reason="not_found") == 1


async def test_a_new_interval_takes_effect(account: FakeGcore, exporter: ExporterFactory) -> None:
    async with exporter(targets=[f"{P}/{R}"]) as running:
        await reload(running, targets=[f"{P}/{R}"], interval="50ms")
        await asyncio.wait_for(polling_of(running).scheduler.wait_for_rounds(4), 10)


async def test_a_new_timeout_takes_effect(account: FakeGcore, exporter: ExporterFactory) -> None:
    async with exporter(targets=[f"{P}/{R + 1}/{X}"], timeout="10s") as running:
        account.inject(f"/images/{X}", 200, delay=1.0, times=None)
        await reload(running, targets=[f"{P}/{R + 1}/{X}"], timeout="100ms")
        samples = await running.samples()
        assert value(samples, "gcore_gpu_image_last_error_info", reason="timeout") == 1


async def test_a_new_concurrency_takes_effect(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    images = [f"f0000000-0000-4000-8000-{n:012d}" for n in range(12)]
    for image_id in images:
        account.put_image(P, R, make_image(image_id, image_id))
    targets = [f"{P}/{R}/{image_id}" for image_id in images]
    async with exporter(targets=targets, concurrency=8) as running:
        await reload(running, targets=targets, concurrency=2)
        account.latency = 0.05
        account.peak_in_flight = 0
        await running.round()
        assert account.peak_in_flight == 2


async def test_stale_after_and_log_level_change_in_place(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=[f"{P}/{R + 1}/{X}"], stale_after="2h") as running:
        polling = polling_of(running)
        scheduler = polling.scheduler
        changed = await polling.reload(
            settings(targets=[f"{P}/{R + 1}/{X}"], stale_after="1h", log_level="debug")
        )
        assert changed
        assert polling.scheduler is scheduler  # no new round, no new session
        assert logging.getLogger().level == logging.DEBUG
        account.inject(f"/images/{X}", 500, times=None)
        running.clock.now += 3601  # past the new stale_after, not the old one
        await running.round()
        samples = await running.samples()  # stale at once: values withdrawn
        assert value(samples, "gcore_gpu_image_up", image_id=X) == 0
        assert value(samples, "gcore_gpu_image_info", image_id=X) is None


async def test_the_same_configuration_changes_nothing(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=[f"{P}/{R}"]) as running:
        polling = polling_of(running)
        scheduler = polling.scheduler
        assert not await polling.reload(settings(targets=[f"{P}/{R}/", f"{P}/{R}"]))
        assert polling.scheduler is scheduler


async def test_listen_needs_a_restart(account: FakeGcore, exporter: ExporterFactory) -> None:
    async with exporter(targets=[f"{P}/{R}"]) as running:
        polling = polling_of(running)
        with capture_logs() as logs:
            await polling.reload(settings(targets=[f"{P}/{R}"], listen="127.0.0.1:9999"))
        assert polling.settings.listen == ("127.0.0.1:0",)
        (warning,) = [e for e in logs if e["log_level"] == "warning"]
        assert warning["event"] == "configuration needs a restart to apply"
        assert warning["settings"] == ["listen"]


async def test_a_bad_configuration_is_refused_and_the_old_one_keeps_running(
    account: FakeGcore, exporter: ExporterFactory, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: [{P}/{R}]\n", encoding="utf-8")
    async with exporter(config=str(config)) as running:
        polling = polling_of(running)
        scheduler = polling.scheduler
        config.write_text(f"targets: [{P}/{R}]\ninterval: soon\nconcurrency: 0\n", encoding="utf-8")
        with capture_logs() as logs:
            applied = await polling.reload_from(lambda: load_settings(config=str(config)))
        assert not applied
        (error,) = [e for e in logs if e["log_level"] == "error"]
        assert error["event"] == "configuration refused, the running one stays"
        assert error["config"] == str(config)
        assert [p.split(":")[0] for p in error["problems"]] == ["interval", "concurrency"]
        assert polling.scheduler is scheduler
        await running.round()
        assert ids(await running.samples(), "gcore_gpu_image_up") == {A, B}


async def test_a_pause_after_a_429_outlives_a_reload(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    # an interval shorter than Retry-After: the client gives up at once instead of waiting
    async with exporter(targets=[f"{P}/{R}"], interval="100s") as running:
        account.inject(rf"/{P}/{R}/images\?", 429, headers={"Retry-After": "300"})
        await running.round()
        assert value(await running.samples(), "gcore_exporter_rate_limit_paused") == 1
        await polling_of(running).reload(settings(targets=[f"{P}/{R + 1}"], interval="100s"))
        assert value(await running.samples(), "gcore_exporter_rate_limit_paused") == 1


def test_a_config_read_through_a_pipe_is_not_read_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GCORE_API_KEY", "k")
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | Settings] = []

    def load() -> None:
        try:
            outcome.append(load_settings(again=True, config=str(fifo)))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # it waits for a writer: give it one, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("reloading waited on a FIFO")
    (error,) = outcome
    assert isinstance(error, ConfigError)
    (line,) = error.problems
    assert line == f"config: {str(fifo)!r} is not a regular file: it cannot be re-read"


async def test_targets_in_another_order_change_nothing(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    async with exporter(targets=[f"{P}/{R}", f"{P}/{R + 1}"]) as running:
        polling = polling_of(running)
        scheduler = polling.scheduler
        assert not await polling.reload(settings(targets=[f"{P}/{R + 1}", f"{P}/{R}"]))
        assert polling.scheduler is scheduler


async def test_images_found_through_a_wildcard_keep_their_series_across_a_reload(
    account: FakeGcore, exporter: ExporterFactory
) -> None:
    account.projects = [make_project(P, "p")]
    account.regions = [make_region(R, "r"), make_region(R + 1, "r1")]
    async with exporter(targets=[f"{P}/*"]) as running:
        assert ids(await running.samples(), "gcore_gpu_image_up") == {A, B, X}
        release = asyncio.Event()
        account.inject(r"/images\?", 200, hold=release, body={"count": 0, "results": []})
        account.inject("/cloud/v1/", 200, hold=release, times=None)  # no new listing either
        try:
            assert await polling_of(running).reload(
                settings(targets=[f"{P}/*", f"{P}/{R + 3}/{Z}"])
            )
            samples = await running.samples()  # before any listing of the new poller ended
            assert ids(samples, "gcore_gpu_image_up") == {A, B, X, Z}
            assert value(samples, "gcore_gpu_image_up", image_id=A) == 1
        finally:
            release.set()
