"""The two end-to-end scenarios: one where every alert of our rules must fire (but
ExporterDown, whose exporters are up), one where none may.

Each scenario is the fake Gcore's initial state, the exporter's targets, and steps that change the
state once Prometheus has seen the previous one (so nothing depends on how fast a machine is).
The failing one runs two replicas of the exporter, as deploy/ha does: no alert may fire twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.demo.fake_clusters import make_baremetal_cluster, make_virtual_cluster
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region, make_task

# Every threshold of deploy/prometheus/rules.yaml (the names of DEFAULTS in exporter/alerting.py),
# shortened through render_rules' documented knob. The transitional one (a time in status) must
# exceed how long an upload that starts now stays queued (one or two polls), lock_age how long the
# run lasts (only an old lock may warn), api_error_window must outlast the 429/500 bursts by far,
# and exporter_down_for must exceed Prometheus' start, when `absent(up)` holds until the scrape
# manager applies its targets (on a 5 s tick).
THRESHOLDS = {
    "failed_for": "2s",
    "transitional_for": "12s",
    "transitional_pending_for": "2s",
    "lock_age": "5m",
    "lock_age_for": "2s",
    "lock_error_for": "2s",
    "stuck_lock_age": "30s",
    "task_failed_for": "2s",
    "missing_for": "2s",
    "fetch_failing_for": "4s",
    "discovery_failing_for": "2s",
    "exporter_down_for": "10s",
    "api_error_window": "1m",
    "unauthorized_for": "2s",
    "rate_limited_for": "2s",
    # longer than the run: what the pipeline step adds stays in the window
    "task_slo_window": "10m",
    "task_success_ratio": "0.9",
    "task_slo_min_tasks": "5",
    "task_duration_p95": "30m",
    "task_slo_for": "2s",
}


def iso(moment: datetime) -> str:
    """A timestamp the way Gcore writes it: UTC without a zone."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class Step:
    """Once `expr` returns a series in Prometheus, apply `change` to the fake API."""

    what: str
    expr: str
    change: Callable[[FakeGcore], Any]


@dataclass
class Scenario:
    name: str
    fake: FakeGcore
    targets: list[str]
    steps: list[Step] = field(default_factory=list)
    # (alertname, labels that the one firing alert must carry); "$dead" is filled in.
    expected_alerts: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    # how many scopes (project/region and kind) the dashboard counts by state of their listing
    scopes: dict[str, int] = field(default_factory=dict)
    dead_target: bool = False
    replicas: int = 1


def _image(image_id: str, name: str, status: str = "active", **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    fields.setdefault("created_at", iso(now - timedelta(days=40)))
    fields.setdefault("updated_at", iso(now - timedelta(days=2)))
    return make_image(image_id, name, status, **fields)


def _set(project: int, region: int, image_id: str, **fields: Any) -> Callable[[FakeGcore], Any]:
    def change(fake: FakeGcore) -> None:
        fake.update_image(project, region, image_id, updated_at=iso(datetime.now(UTC)), **fields)

    return change


def _all(*changes: Callable[[FakeGcore], Any]) -> Callable[[FakeGcore], Any]:
    def change(fake: FakeGcore) -> None:
        for item in changes:
            item(fake)

    return change


def _status_is(image_id: str, status: str) -> str:
    return f'gcore_gpu_image_status{{image_id="{image_id}", status="{status}"}} == 1'


def failing() -> Scenario:
    """Project 1: uploads finishing, a killed image, an ERROR lock, a 404, 401s, 429s and 500s, a
    region whose listing is forbidden (403), two exporters and a scrape target that is down.
    Wildcards over projects 1 and 3 and regions 30 and 31 (31 has no virtual GPU service): in
    3/30 an image stuck in queued, a lock that outlives its task, a bare-metal image, and an
    upload that failed among failed tasks that must not alert."""
    now = datetime.now(UTC)
    fake = FakeGcore(api_key="test-key")
    listed = [  # region 10 is discovered through the list endpoint
        _image("img-upload-a", "ubuntu-22.04-cuda-12.8", "queued", size=None, updated_at=iso(now)),
        _image("img-upload-b", "ubuntu-24.04-cuda-12.9", "queued", size=None, updated_at=iso(now)),
        _image("img-broken", "rocky-9-cuda-12.4", tags=[{"key": "team", "value": "research"}]),
        _image(
            "img-locked",
            "debian-12-cuda-12.6",
            task_id="task-failed",
            tags=[{"key": "owner", "value": "ml-platform", "read_only": True}],
        ),
        _image("img-stuck", "almalinux-9-cuda-12.8", "uploading", size=None),
    ]
    for image in listed:
        fake.put_image(1, 10, image)
    fake.put_task(
        make_task(
            "task-failed",
            "ERROR",
            "update_image",
            created_on=iso(now - timedelta(hours=2)),
            error="Image update failed",
        )
    )
    # Region 12 is discovered too, but the key may not list it: no image series, ever.
    fake.inject(r"/1/12/images\?", 403, times=None)
    for image_id, name in (
        ("img-denied", "windows-2022-cuda-12.2"),
        ("img-throttled", "ubuntu-20.04-cuda-11.8"),
        ("img-flaky", "centos-stream-9-cuda-12.1"),
    ):  # region 11 is watched image by image; img-deleted does not exist (404)
        fake.put_image(1, 11, _image(image_id, name))

    _wildcards(fake, now)
    _clusters(fake)

    def faults(fake: FakeGcore) -> None:
        # The key loses access to one image; a burst of 429s (each pauses the whole exporter for
        # Retry-After) and of 500s, two failed fetches each after retries, then recovery.
        fake.inject(r"/images/img-denied$", 401, times=None)
        fake.inject(r"/images/img-throttled$", 429, headers={"Retry-After": "1"}, times=6)
        fake.inject(r"/images/img-flaky$", 500, times=6)

    return Scenario(
        name="failing",
        fake=fake,
        targets=[
            "*",
            "baremetal:*",
            "1/10",
            "1/12",
            "1/11/img-deleted",
            "1/11/img-denied",
            "1/11/img-throttled",
            "1/11/img-flaky",
        ],
        steps=[
            PIPELINE_STEP,
            Step("uploads queued", _status_is("img-upload-a", "queued"), lambda _: None),
            Step("second upload queued", _status_is("img-upload-b", "queued"), lambda _: None),
            Step(
                "img-broken active and region 11 fetched by every replica",
                f"{_status_is('img-broken', 'active')} and on () "
                'count(min by (image_id) (gcore_gpu_image_up{region_id="11"}) == 1) == 3',
                _all(
                    _set(1, 10, "img-upload-a", status="active", size=4_294_967_296),
                    _set(1, 10, "img-upload-b", status="active", size=5_368_709_120),
                    _set(1, 10, "img-broken", status="killed"),
                    faults,
                ),
            ),
        ],
        expected_alerts=[
            (
                "GcoreGpuImageNotActive",
                {
                    "severity": "critical",
                    "image_id": "img-broken",
                    "status": "killed",
                    "project_id": "1",
                    "region_id": "10",
                },
            ),
            (
                "GcoreGpuImageNotActive",
                {"severity": "warning", "image_id": "img-stuck", "status": "uploading"},
            ),
            ("GcoreGpuImageLockedTooLong", {"severity": "warning", "image_id": "img-locked"}),
            (
                "GcoreGpuImageLockedTooLong",
                {
                    "severity": "critical",
                    "image_id": "img-locked",
                    "task_id": "task-failed",
                    "task_state": "ERROR",
                    "task_type": "update_image",
                },
            ),
            (
                "GcoreGpuImageMissing",
                {
                    "severity": "critical",
                    "image_id": "img-deleted",
                    "project_id": "1",
                    "region_id": "11",
                },
            ),
            ("GcoreGpuImageFetchFailing", {"severity": "warning", "image_id": "img-denied"}),
            (
                "GcoreGpuImageDiscoveryFailing",
                {"severity": "critical", "project_id": "1", "region_id": "12"},
            ),
            ("GcoreGpuImageApiUnauthorized", {"severity": "critical", "code": "401"}),
            ("GcoreGpuImageApiUnauthorized", {"severity": "critical", "code": "403"}),
            (
                "GcoreGpuImageApiRateLimited",
                {
                    "severity": "warning",
                    "reason": "rate_limited",
                    "project_id": "1",
                    "region_id": "11",
                },
            ),
            ("GcoreGpuImageExporterReplicaDown", {"severity": "info", "instance": "$dead"}),
            (
                "GcoreGpuImageNotActive",
                {
                    "severity": "warning",
                    "image_id": "img-queued",
                    "status": "queued",
                    "project_id": "3",
                    "region_id": "30",
                },
            ),
            ("GcoreGpuImageLockStuck", {"severity": "warning", "image_id": "img-stuck-lock"}),
            (
                "GcoreGpuClusterImageNotActive",
                {"severity": "critical", "cluster_id": "cl-train", "image_id": "img-broken"},
            ),
            (
                "GcoreGpuClusterImageNotActive",
                {"severity": "critical", "cluster_id": "cl-orphan", "image_id": "img-deleted"},
            ),
            (
                "GcoreGpuImageTaskFailed",
                {
                    "severity": "warning",
                    "task_id": "task-upload-failed",
                    "task_type": "download_image",
                    "image_id": "img-upload-failed",
                    "project_id": "3",
                    "region_id": "30",
                },
            ),
            *PIPELINE_ALERTS,
        ],
        images=[
            "img-upload-a",
            "img-upload-b",
            "img-broken",
            "img-locked",
            "img-stuck",
            "img-deleted",
            "img-denied",
            "img-throttled",
            "img-flaky",
            "img-queued",
            "img-stuck-lock",
            "img-bm",
        ],
        # listed: 1/10 and {1,3}/30 of both kinds; failing: 1/12 (403); {1,3}/31 of both kinds:
        # no GPU service (probed whatever the flags say)
        scopes={"listed": 5, "failing": 1, "unavailable": 4},
        dead_target=True,
        replicas=2,
    )


def _clusters(fake: FakeGcore) -> None:
    """GPU clusters: one on img-broken (killed later) and one on img-deleted (404) alert; one
    Kubernetes-managed bare-metal cluster on img-bm and one without image stay quiet."""
    book = fake.clusters
    book.put("virtual", 1, 10, make_virtual_cluster("cl-train", "train-a", "img-broken"))
    book.put("virtual", 1, 10, make_virtual_cluster("cl-snap", "from-snapshot", None))
    book.put("virtual", 1, 11, make_virtual_cluster("cl-orphan", "old-infer", "img-deleted"))
    k8s = make_baremetal_cluster("cl-k8s", "mk8s-pool", "img-bm", managed_by="k8s", servers=4)
    book.put("baremetal", 3, 30, k8s)


def _wildcards(fake: FakeGcore, now: datetime) -> None:
    """What `*` and `baremetal:*` find: projects 1 and 3 times regions 30 (both kinds of GPU
    service) and 31 (virtual only, and answering 404 for it: a region without the service)."""
    fake.projects = [make_project(1, "ml-platform"), make_project(3, "ml-research")]
    fake.regions = [
        make_region(30, "Luxembourg-2", gpu=True, baremetal=True),
        make_region(31, "Frankfurt", gpu=True),
    ]
    fake.unserved.update({("virtual", 31), ("baremetal", 31)})
    # updated_at two days ago: queued ever since
    fake.put_image(3, 30, _image("img-queued", "rocky-9-cuda-12.8", "queued", size=None))
    fake.put_image(3, 30, _image("img-stuck-lock", "debian-12-cuda-12.8", task_id="task-done"))
    fake.put_image(3, 30, _image("img-bm", "ubuntu-22.04-bm-cuda-12.8"), kind="baremetal")

    def ago(**delta: float) -> str:
        return iso(now - timedelta(**delta))

    fake.put_task(  # finished two minutes ago, and the image is still locked by it
        make_task(
            "task-done",
            "FINISHED",
            "update_image",
            created_on=ago(minutes=3),
            finished_on=ago(minutes=2),
        )
    )
    where = {"project_id": 3, "region_id": 30}
    fake.put_task(  # the one failed image task of the failed-task window (a day)
        make_task(
            "task-upload-failed",
            "ERROR",
            "download_image",
            created_on=ago(hours=1),
            finished_on=ago(minutes=50),
            error="Image download failed: HTTP 404 from https://files.example.com/rocky-9.qcow2",
            created_resources={"images": ["img-upload-failed"]},
            **where,
        )
    )
    fake.put_task(  # not an image task
        make_task("task-vm-failed", "ERROR", "create_vm", created_on=ago(minutes=30), **where)
    )
    fake.put_task(  # an image task that failed before the window
        make_task(
            "task-old-upload",
            "ERROR",
            "download_image",
            created_on=ago(hours=31),
            finished_on=ago(hours=30),
            **where,
        )
    )


def _pipeline(fake: FakeGcore) -> None:
    """Uploads in 3/30 that ended after the exporter's first look (which is its baseline): six
    finished after about 70 minutes, six failed (acknowledged in Gcore, so no TaskFailed alert:
    they still count against the pipeline)."""
    now = datetime.now(UTC)
    for n in range(12):
        failed = n % 2 == 1
        fake.put_task(
            make_task(
                f"task-pipeline-{n}",
                "ERROR" if failed else "FINISHED",
                "download_image",
                created_on=iso(now - timedelta(minutes=70 + n)),
                finished_on=iso(now),
                acknowledged_at=iso(now) if failed else None,
                error="Image download failed: HTTP 403" if failed else None,
                project_id=3,
                region_id=30,
            )
        )


PIPELINE_STEP = Step(
    "the image tasks of 3/30 seen once (the baseline) by every replica",
    'count(gcore_gpu_image_tasks_finished_total{project_id="3", region_id="30",'
    ' task_type="download_image", state="ERROR"}) == 2',
    _pipeline,
)
PIPELINE_ALERTS = [
    (name, {"severity": "warning", "project_id": "3", "region_id": "30"} | {"task_type": t})
    for name in ("GcoreGpuImageTaskSuccessRatioLow", "GcoreGpuImageTaskDurationHigh")
    for t in ("download_image",)
]


def healthy() -> Scenario:
    """Project 2: active images, an upload that finishes, a short lock by a RUNNING task."""
    now = datetime.now(UTC)
    fake = FakeGcore(api_key="test-key")
    for image in (
        _image("h-base", "ubuntu-22.04-cuda-12.8", tags=[{"key": "env", "value": "prod"}]),
        _image("h-new", "ubuntu-24.04-cuda-12.9", "queued", size=None, updated_at=iso(now)),
        _image("h-busy", "debian-12-cuda-12.6", task_id="task-running"),
    ):
        fake.put_image(2, 20, image)
    fake.put_task(make_task("task-running", "RUNNING", "update_image", created_on=iso(now)))
    fake.put_image(2, 21, _image("h-pinned", "rocky-9-cuda-12.4"))
    return Scenario(
        name="healthy",
        fake=fake,
        targets=["2/20", "2/21/h-pinned"],
        steps=[
            Step(
                "upload queued",
                _status_is("h-new", "queued"),
                _set(2, 20, "h-new", status="active", size=3_221_225_472),
            ),
        ],
        images=["h-base", "h-new", "h-busy", "h-pinned"],
    )
