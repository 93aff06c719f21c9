"""The simulated Gcore account behind `--demo`: two projects, four regions, images that change.

The demo watches `*` and `baremetal:*`. Region 10 offers virtual GPU images, region 20 virtual and
bare-metal ones, region 30 announces GPU capability but answers 404 (a region without the
service: counted as unavailable, no error), and region 40's capability flags say no GPU at all,
yet it holds images (flags are hints: every ACTIVE region is probed). Every few seconds an upload
moves through queued -> saving -> active under a task lock and another image is killed and
recreated; one image is stuck in `queued` under the lock of a task that finished long ago; every
~30 s an image upload fails (an ERROR task); image tasks end at a steady rate (the pipeline); now
and then the API answers 502 or 429. GPU clusters of both kinds boot from the images
(`_clusters`): one from the image that is killed now and then, one from an image that is deleted
after a minute, one run by Gcore's managed Kubernetes, and one without image.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from exporter.demo.fake_clusters import make_baremetal_cluster, make_virtual_cluster
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region, make_task

DEMO_API_KEY = "demo-key"
PROJECT = 1
OTHER_PROJECT = 2
DISCOVERED_REGION = 10
BAREMETAL_REGION = 20
UNSERVED_REGION = 30
FLAGLESS_REGION = 40  # its flags say no GPU service, yet it serves virtual GPU images
FAILED_TASKS_KEPT: Final = 50  # the demo's Tasks API forgets older failures
_FAILURE_EVERY: Final = 6  # ticks between two failed uploads
_FAILURE_SCOPES: Final = ((PROJECT, DISCOVERED_REGION), (OTHER_PROJECT, DISCOVERED_REGION))
STUCK_TASK = "d3m0d3m0-57c4-4000-8000-000000000001"
PIPELINE_EVERY: Final = 2  # ticks between two image tasks that end (about one every 10 s)
PIPELINE_FAILS: Final = 5  # one in this many ends in ERROR (acknowledged: no TaskFailed alert)
PIPELINE_KEPT: Final = 200  # the demo's Tasks API forgets older ones
PIPELINE_MINUTES: Final = (2.0, 8.0, 240.0)  # shortest, median and longest upload
LEGACY_IMAGE = (
    "6f1e0b9c-0099-4c2a-9d3e-0123456789ab"  # deleted at LEGACY_GONE_AT, its cluster stays
)
LEGACY_GONE_AT: Final = 12  # ticks: about a minute


def _image_id(n: int) -> str:
    return f"6f1e0b9c-{n:04d}-4c2a-9d3e-0123456789ab"


TARGETS: Final = ("*", "baremetal:*")
"""What the demo watches, whatever targets were given."""


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


class DemoWorld:
    def __init__(self, fake: FakeGcore, rng: random.Random | None = None) -> None:
        self.fake = fake
        self.rng = rng or random.Random(7)
        self.tick = 0
        now = datetime.now(UTC)
        fake.projects = [
            make_project(PROJECT, "ml-research"),
            make_project(OTHER_PROJECT, "inference-prod"),
        ]
        fake.regions = [
            make_region(DISCOVERED_REGION, "Luxembourg-2"),
            make_region(BAREMETAL_REGION, "Santa Clara-1", baremetal=True),
            make_region(UNSERVED_REGION, "Frankfurt-3"),
            make_region(FLAGLESS_REGION, "Paris-1", gpu=False, country="FR"),
        ]
        fake.unserved = {("virtual", UNSERVED_REGION)} | {
            ("baremetal", region)
            for region in (DISCOVERED_REGION, UNSERVED_REGION, FLAGLESS_REGION)
        }
        drivers = ["550.90.07", "570.148.08", "575.57.08"]
        for n in range(12):
            region = DISCOVERED_REGION if n < 6 else BAREMETAL_REGION
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
        _other_project(fake, now)
        _baremetal(fake, now)
        _flagless(fake, now)
        put_clusters(fake)
        _fail_an_upload(fake, 0)  # one at once, then one every _FAILURE_EVERY ticks
        self._pipeline_rng = random.Random(20)  # its own: the faults' sequence stays

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
            PROJECT, BAREMETAL_REGION, killed, status="killed" if phase >= 6 else "active"
        )
        if self.tick == LEGACY_GONE_AT:  # deleted while a cluster still boots from it
            self.fake.remove_image(PROJECT, DISCOVERED_REGION, LEGACY_IMAGE)
        if self.tick % _FAILURE_EVERY == 0:
            _fail_an_upload(self.fake, self.tick // _FAILURE_EVERY)
        if self.tick % PIPELINE_EVERY == 0:
            end_an_image_task(self.fake, self.tick // PIPELINE_EVERY, self._pipeline_rng)
        if self.rng.random() < 0.1:
            self.fake.inject(
                r"/images",
                502,
                body="<html><body>Bad gateway</body></html>",
                content_type="text/html",
                times=2,
            )
        if self.rng.random() < 0.03:
            self.fake.inject(r"/images", 429, headers={"Retry-After": "3"}, times=1)


def _other_project(fake: FakeGcore, now: datetime) -> None:
    """Project 2: a serving image, and one stuck in `queued` under a finished task's lock."""
    fake.put_image(
        OTHER_PROJECT,
        DISCOVERED_REGION,
        make_image(_image_id(12), "llama-serving-gpu", created_at=_ts(now - timedelta(days=9))),
    )
    fake.put_task(
        make_task(
            STUCK_TASK,
            "FINISHED",
            "download_image",
            created_on=_ts(now - timedelta(hours=3, minutes=5)),
            finished_on=_ts(now - timedelta(hours=3)),
            project_id=OTHER_PROJECT,
            region_id=DISCOVERED_REGION,
        )
    )
    fake.put_image(
        OTHER_PROJECT,
        DISCOVERED_REGION,
        make_image(
            _image_id(13),
            "stuck-upload-gpu",
            status="queued",
            size=None,
            task_id=STUCK_TASK,
            created_at=_ts(now - timedelta(hours=3, minutes=5)),
            updated_at=_ts(now - timedelta(hours=3, minutes=5)),
        ),
    )


def _baremetal(fake: FakeGcore, now: datetime) -> None:
    """Region 20: bare-metal images in both projects."""
    for n, project in ((14, PROJECT), (15, PROJECT), (16, OTHER_PROJECT)):
        image = make_image(
            _image_id(n),
            f"ubuntu-22.04-baremetal-h100-{n}",
            created_at=_ts(now - timedelta(days=20 + n)),
            os_distro="ubuntu",
            gpu_driver_version="570.148.08",
        )
        fake.put_image(project, BAREMETAL_REGION, image, kind="baremetal")


def _fail_an_upload(fake: FakeGcore, number: int) -> None:
    """The `number`-th upload from a URL fails before it becomes an image: only a task tells;
    the Tasks API keeps the last FAILED_TASKS_KEPT."""
    project, region = _FAILURE_SCOPES[number % len(_FAILURE_SCOPES)]
    now = datetime.now(UTC)
    created = {"images": [f"0badf00d-{number:04d}-4000-8000-000000000000"]}
    fake.put_task(
        make_task(
            f"fa11ed00-0000-4000-8000-{number:012d}",
            "ERROR",
            "download_image",
            created_on=_ts(now - timedelta(seconds=25)),
            updated_on=_ts(now),
            finished_on=_ts(now),
            error="Failed to download https://images.example.com/cuda-12.8.qcow2: HTTP 404",
            project_id=project,
            region_id=region,
            created_resources=created if number % 2 else None,
        )
    )
    failed = [t for t, task in fake.tasks.items() if t.startswith("fa11ed00")]
    for old in failed[:-FAILED_TASKS_KEPT]:
        del fake.tasks[old]


def _flagless(fake: FakeGcore, now: datetime) -> None:
    """Region 40: no GPU by its flags, two images in fact."""
    for n in (17, 18):
        image = make_image(
            _image_id(n),
            f"ubuntu-24.04-cuda-12.8-paris-{n}",
            created_at=_ts(now - timedelta(days=n)),
            region_id=FLAGLESS_REGION,
            project_id=PROJECT,
        )
        fake.put_image(PROJECT, FLAGLESS_REGION, image)


def end_an_image_task(fake: FakeGcore, number: int, rng: random.Random) -> None:
    """The `number`-th image task of CI's pipeline ends: uploads (download_image) and images made
    from volumes (create_image) take minutes, log-normally around the median, rarely hours; every
    PIPELINE_FAILS-th ends in ERROR."""
    shortest, median, longest = PIPELINE_MINUTES
    minutes = rng.lognormvariate(math.log(median), 0.8)
    took = timedelta(minutes=min(max(minutes, shortest), longest))
    failed = number % PIPELINE_FAILS == 0
    now = datetime.now(UTC)
    project, region = _FAILURE_SCOPES[number % len(_FAILURE_SCOPES)]
    fake.put_task(
        make_task(
            f"c1c1c1c1-0000-4000-8000-{number:012d}",
            "ERROR" if failed else "FINISHED",
            ("download_image", "create_image")[number // 2 % 2],
            created_on=_ts(now - took),
            updated_on=_ts(now),
            finished_on=_ts(now),
            acknowledged_at=_ts(now) if failed else None,
            error="Image conversion failed: unsupported qcow2 feature" if failed else None,
            project_id=project,
            region_id=region,
        )
    )
    ended = [t for t in fake.tasks if t.startswith("c1c1c1c1")]
    for old in ended[:-PIPELINE_KEPT]:
        del fake.tasks[old]


def put_clusters(fake: FakeGcore) -> None:
    """GPU clusters on the demo's images (ids c1a57e70-…): one on the image that is killed now
    and then, one on an image deleted after a minute, one run by Gcore's managed Kubernetes and
    one whose boot volume names no image."""
    book = fake.clusters
    fake.put_image(PROJECT, DISCOVERED_REGION, make_image(LEGACY_IMAGE, "cuda-11-legacy"))

    def cid(n: int) -> str:
        return f"c1a57e70-{n:04d}-4000-8000-000000000000"

    virtual = (
        (PROJECT, DISCOVERED_REGION, cid(1), "train-a", _image_id(0), 4),
        (PROJECT, DISCOVERED_REGION, cid(2), "legacy-infer", LEGACY_IMAGE, 2),
        (PROJECT, DISCOVERED_REGION, cid(3), "from-snapshot", None, 1),
        (PROJECT, BAREMETAL_REGION, cid(4), "eval", _image_id(8), 2),
    )
    for project, region, cluster_id, name, image, servers in virtual:
        cluster = make_virtual_cluster(cluster_id, name, image, servers=servers)
        book.put("virtual", project, region, cluster)
    baremetal = (
        (PROJECT, cid(5), "h100-train", _image_id(14), "user", 8),
        (OTHER_PROJECT, cid(6), "mk8s-gpu-pool", _image_id(16), "k8s", 3),
    )
    for project, cluster_id, name, image_id, managed_by, servers in baremetal:
        cluster = make_baremetal_cluster(
            cluster_id, name, image_id, managed_by=managed_by, servers=servers
        )
        book.put("baremetal", project, BAREMETAL_REGION, cluster)


async def animate(world: DemoWorld, period: float = 5.0) -> None:
    while True:
        await asyncio.sleep(period)
        world.step()
