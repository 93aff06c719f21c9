"""What a round drops, reference counting frees: it leaves no cycle of ours for the collector.

A cycle waits for a full collection, or, frozen out of the collector, for the thaw; meanwhile it
holds whatever its frames held (a failed listing's page of images, say). Rounds run against the
fake API over loopback while images are replaced, statuses and locks flip and requests fail.
"""

from __future__ import annotations

import gc
import random
import types
from collections import Counter
from pathlib import Path

import pytest
from pydantic import SecretStr
from support.fake_api import API_KEY

import exporter
from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_scheduler
from exporter.demo.fake_gcore import FakeGcore, make_image, make_task
from exporter.metrics.exposition import render
from exporter.vocabulary import ImageKey, Scope, Targets

SCOPE = Scope(1, 2)
EXPLICIT = ImageKey(Scope(1, 3), "e0000000-0000-4000-8000-000000000001")
PACKAGE = str(Path(exporter.__file__).parent)


class Account:
    """The fake's images, churned a round at a time: a tenth replaced, statuses and locks flip."""

    def __init__(self, fake: FakeGcore, images: int) -> None:
        self.fake, self.rng = fake, random.Random(images)
        self.ids: list[str] = []
        self.made = 0
        fake.put_image(1, 3, make_image(EXPLICIT.image_id, "explicit"))
        for _ in range(images):
            self.add()

    def add(self) -> None:
        self.made += 1
        image_id = f"c4a40000-0000-4000-8000-{self.made:012d}"
        self.fake.put_image(1, 2, make_image(image_id, f"busy-{self.made}"))
        self.ids.append(image_id)

    def churn(self) -> None:
        rng, tenth = self.rng, max(1, len(self.ids) // 10)
        for _ in range(tenth):
            self.fake.remove_image(1, 2, self.ids.pop(rng.randrange(len(self.ids))))
            self.add()
        for image_id in rng.sample(self.ids, tenth):
            self.fake.update_image(1, 2, image_id, status=rng.choice(["saving", "active"]))
        for n, image_id in enumerate(rng.sample(self.ids, 2 * tenth)):
            task_id = f"7a5c0000-0000-4000-8000-{self.made:06d}{n:06d}"
            if n % 4:  # half RUNNING, a quarter ended, a quarter unknown to the Tasks API
                self.fake.put_task(make_task(task_id, "RUNNING" if n % 2 else "FINISHED"))
            self.fake.update_image(1, 2, image_id, task_id=task_id)


def ours(thing: object) -> bool:
    """An object of the exporter's types, or a frame of its code."""
    if isinstance(thing, types.FrameType):
        return thing.f_code.co_filename.startswith(PACKAGE)
    return type(thing).__module__.split(".")[0] == "exporter"


def shown(thing: object) -> str:
    if isinstance(thing, types.FrameType):
        return f"frame of {thing.f_code.co_qualname}"
    return type(thing).__qualname__


async def garbage_after_churn(fake: FakeGcore, url: str, images: int) -> list[object]:
    """What the collector finds unreachable after four churned rounds, two with a failed
    listing (on a page past the first), each with a failed GET and a failed task lookup."""
    fake.max_page = 50
    account = Account(fake, images)
    settings = load_settings(demo=True, interval=60, stale_after=300, timeout=2, concurrency=4)
    monitor = new_monitor(settings)
    upstream = Upstream(url, SecretStr(API_KEY), Targets((EXPLICIT,), (SCOPE,)))
    async with open_scheduler(settings, upstream, monitor) as scheduler:
        await scheduler.run_once()  # the first round fills caches that live as long as we do
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # every collection keeps what it finds, for us to see
        try:
            for number in range(4):
                account.churn()
                if number % 2 == 0:
                    fake.inject(r"/images\?.*offset=[1-9]", 403)
                fake.inject(r"/images/[^?]+$", 403)
                fake.inject(r"/tasks/", 403)
                await scheduler.run_once()
                render(monitor.publisher.current, openmetrics=False)
            gc.collect()
            return list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


@pytest.mark.parametrize("images", [120, 1200])
async def test_churned_rounds_leave_no_cycle_of_ours(
    fake: FakeGcore, fake_url: str, images: int
) -> None:
    garbage = await garbage_after_churn(fake, fake_url, images)
    assert fake.count(r"/images\?") >= 4 and fake.count("/tasks/") > 0
    assert Counter(shown(thing) for thing in garbage if ours(thing)) == Counter()
