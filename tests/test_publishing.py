"""Snapshots are published by one path: the poller's `publish`, and the publisher's own loop
between rounds. Whoever else changes what a scrape sees goes through them."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from support.exporter import ExporterFactory
from support.waiting import wait_until

from exporter.config.settings import load_settings
from exporter.daemon.lifecycle import POLLING
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.metrics.snapshot import Publisher, Snapshot

P, R = 3, 5
A = "a0000000-0000-4000-8000-00000000000a"
B = "b0000000-0000-4000-8000-00000000000b"
PATHS = {"Poller.publish", "Publisher.run"}


@pytest.fixture
def callers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Who called `Publisher.publish`, in order, for every snapshot published."""
    found: list[str] = []
    publish = Publisher.publish

    async def recording(self: Publisher, *, ready: bool = False) -> Snapshot:
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        found.append(frame.f_back.f_code.co_qualname)
        return await publish(self, ready=ready)

    monkeypatch.setattr(Publisher, "publish", recording)
    return found


async def test_every_snapshot_comes_through_the_one_publishing_path(
    fake: FakeGcore, exporter: ExporterFactory, callers: list[str]
) -> None:
    fake.put_image(P, R, make_image(A, "a"))
    fake.put_image(P, R + 1, make_image(B, "b"))
    async with exporter(targets=[f"{P}/{R}"]) as running:
        polling = running.app[POLLING]
        await running.refresh()
        await running.poll_tasks()
        await running.round()
        new = load_settings(interval="1h", listen="127.0.0.1:0", targets=[f"{P}/{R + 1}"])
        assert await polling.reload(new)
        await asyncio.wait_for(polling.scheduler.wait_for_rounds(1), 10)
        polling.monitor.publisher.mark_dirty()  # what changes between rounds
        await wait_until(lambda: "Publisher.run" in callers, what="a publish between rounds")
    assert len(callers) >= 8
    assert set(callers) == PATHS, callers
