"""The simulated Gcore account behind `--demo`: 13 watched images in two regions that keep changing.

Region 10 (6 images) is watched through discovery, region 20 through 7 explicit image ids, one of
which does not exist, to show a 404 (so `--demo --once` exits 1: one fetch always fails). Every few
seconds an upload moves through queued -> saving -> active under a task lock, another image is
killed and recreated, and now and then the API answers 500 or 429.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from exporter.fakeapi import FakeGcore, make_image, make_task

DEMO_API_KEY = "demo-key"
PROJECT = 1
DISCOVERED_REGION = 10
EXPLICIT_REGION = 20
MISSING_IMAGE = "00000000-0000-4000-8000-000000000404"


def _image_id(n: int) -> str:
    return f"6f1e0b9c-{n:04d}-4c2a-9d3e-0123456789ab"


TARGETS: Final = (
    f"{PROJECT}/{DISCOVERED_REGION}",
    *(f"{PROJECT}/{EXPLICIT_REGION}/{_image_id(n)}" for n in range(6, 12)),
    f"{PROJECT}/{EXPLICIT_REGION}/{MISSING_IMAGE}",
)
"""What the demo watches, whatever targets were given."""


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


class DemoWorld:
    def __init__(self, fake: FakeGcore, rng: random.Random | None = None) -> None:
        self.fake = fake
        self.rng = rng or random.Random(7)
        self.tick = 0
        now = datetime.now(UTC)
        drivers = ["550.90.07", "570.148.08", "575.57.08"]
        for n in range(12):
            region = DISCOVERED_REGION if n < 6 else EXPLICIT_REGION
            extra: dict[str, Any] = {
                "created_at": _ts(now - timedelta(days=30 + 11 * n)),
                "updated_at": _ts(now - timedelta(days=n)),
                "gpu_driver_version": drivers[n % 3],
                "tags": [
                    {
                        "key": "team",
                        "value": "ml-infra" if n % 2 else "research",
                        "read_only": False,
                    }
                ],
            }
            if n == 5:
                extra["size"] = None  # an image Gcore reports without a size
            name = f"ubuntu-22.04-cuda-{12 + n % 3}.{n}-gpu"
            image = make_image(_image_id(n), name, region_id=region, project_id=PROJECT, **extra)
            if n == 11:
                for key in ("disk_format", "hw_firmware_type", "cuda_toolkit_version"):
                    del image[key]
            fake.put_image(PROJECT, region, image)

    def step(self) -> None:
        """Advance the story by one tick (the demo ticks every few seconds)."""
        self.tick += 1
        phase = self.tick % 12
        uploading = _image_id(1)
        task_id = f"d3m0d3m0-0000-4000-8000-{self.tick // 12:012d}"
        if phase == 1:
            self.fake.put_task(
                make_task(
                    task_id, "RUNNING", "upload_virtual_image", created_on=_ts(datetime.now(UTC))
                )
            )
            self.fake.update_image(
                PROJECT, DISCOVERED_REGION, uploading, status="queued", task_id=task_id, size=None
            )
        elif phase == 4:
            self.fake.update_image(PROJECT, DISCOVERED_REGION, uploading, status="saving")
        elif phase == 8:
            self.fake.tasks[task_id]["state"] = "FINISHED"
            self.fake.update_image(
                PROJECT,
                DISCOVERED_REGION,
                uploading,
                status="active",
                task_id=None,
                size=4_294_967_296,
            )
        killed = _image_id(8)
        self.fake.update_image(
            PROJECT, EXPLICIT_REGION, killed, status="killed" if phase >= 6 else "active"
        )
        if self.rng.random() < 0.1:
            self.fake.inject(
                r"/images/",
                502,
                body="<html><body>Bad gateway</body></html>",
                content_type="text/html",
                times=2,
            )
        if self.rng.random() < 0.03:
            self.fake.inject(r"/images", 429, headers={"Retry-After": "3"}, times=1)


async def animate(world: DemoWorld, period: float = 5.0) -> None:
    while True:
        await asyncio.sleep(period)
        world.step()
