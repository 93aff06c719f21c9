"""Image tasks that failed: an upload that dies before it becomes an image leaves only a task.

The Tasks feed (`task_feed`) hands over the recent tasks of the watched projects and regions;
this keeps those in ERROR whose type matches the image-task pattern (by default the SDK's image
task types: `create_image`, `download_image`, `delete_image`, and GPU `upload_*image` ones; each
failure keeps its `task_type`, since a failed upload and a failed delete are different news).
The API filters on creation time, so the feed looks back a day further than the window; a task
counts when it finished within it (`finished_on`, else `updated_on`, else when first seen).
A failure someone acknowledged in Gcore (`acknowledged_at`) leaves the metrics, unless
`keep_acknowledged`, which keeps it with an `acknowledged` label. A failed poll keeps the last
known set; either way a task leaves the metrics once the window has passed:

    gcore_gpu_image_task_failed_timestamp_seconds{project_id="1",region_id="10",task_id="…",
        task_type="download_image",image_id=""} 1.7e9
    gcore_gpu_image_task_failed_info{project_id="1",region_id="10",task_id="…",error="…"} 1
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.gcore.models import Task, clean_text
from exporter.metrics.families import CACHED_HELP, truncate

log = structlog.get_logger(__name__)

LOOKBACK: Final = 86400.0  # how much longer than the window a task may have run before failing
_TYPES_LOGGED: Final = 256  # a bound on the task types remembered for logging


@dataclass(frozen=True, slots=True)
class FailedTask:
    project_id: int
    region_id: int
    task_id: str
    task_type: str
    image_id: str  # the image the task created, "" when it names none
    error: str  # truncated
    finished: float
    acknowledged: bool = False


def failed_task(task: Task, first_seen: float) -> FailedTask | None:
    """What is exported of an ERROR task; None if it belongs to no project and region."""
    if task.project_id is None or task.region_id is None:
        return None
    when = task.finished_on or task.updated_on
    images = task.created_resources.images if task.created_resources else ()
    return FailedTask(
        project_id=task.project_id,
        region_id=task.region_id,
        task_id=clean_text(task.id),
        task_type=clean_text(task.task_type or ""),
        image_id=clean_text(images[0]) if images else "",
        error=truncate(clean_text(task.error or "")),
        finished=when.timestamp() if when is not None else first_seen,
        acknowledged=task.acknowledged_at is not None,
    )


class FailedTasks(Collector):
    """A subscriber of the Tasks feed, and the collector of what it keeps."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        pattern: str,
        window: float,
        keep_acknowledged: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pattern = re.compile(pattern)
        self._window = window
        self._keep_acknowledged = keep_acknowledged
        self._now = clock
        self._failed: dict[str, FailedTask] = {}
        self._first_seen: dict[str, float] = {}
        self._types: set[str] = set()
        self._registry = registry
        registry.register(self)

    def adopt(self, previous: FailedTasks) -> None:
        """Take over what a poll this one replaces (a reload) knew: no failed task is lost."""
        self._failed = dict(previous._failed)
        self._first_seen = dict(previous._first_seen)
        self._types = set(previous._types)

    def close(self) -> None:
        self._registry.unregister(self)

    def take(self, tasks: Sequence[Task], now: float) -> None:
        """Keep the failed image tasks of one poll of the feed, replacing what was known."""
        failed: dict[str, FailedTask] = {}
        first_seen: dict[str, float] = {}
        for task in tasks:
            task_type = task.task_type or ""
            matches = self._pattern.search(task_type) is not None
            self._note_type(task_type, matches)
            if not matches or task.state.upper() != "ERROR":
                continue
            if task.acknowledged_at is not None and not self._keep_acknowledged:
                continue  # someone saw it in Gcore: no more news
            first_seen[task.id] = self._first_seen.get(task.id, now)
            found = failed_task(task, first_seen[task.id])
            if found is not None:
                failed[task.id] = found
        self._failed, self._first_seen = failed, first_seen

    def collect(self) -> Iterator[Metric]:
        acknowledged = ["acknowledged"] if self._keep_acknowledged else []
        when = GaugeMetricFamily(
            "gcore_gpu_image_task_failed_timestamp_seconds",
            CACHED_HELP + "When an image task (upload, download, delete: see task_type) that "
            "ended in ERROR finished (finished_on, else updated_on, else when first seen); "
            "present for the failed-task window.",
            labels=["project_id", "region_id", "task_id", "task_type", "image_id", *acknowledged],
        )
        info = GaugeMetricFamily(
            "gcore_gpu_image_task_failed_info",
            CACHED_HELP + "The error text of a failed image task (truncated), always 1.",
            labels=["project_id", "region_id", "task_id", "error"],
        )
        horizon = self._now() - self._window
        for task in sorted(self._failed.values(), key=lambda t: (t.finished, t.task_id)):
            if task.finished < horizon:
                continue
            scope = [str(task.project_id), str(task.region_id), task.task_id]
            flag = [str(task.acknowledged).lower()] if self._keep_acknowledged else []
            when.add_metric([*scope, task.task_type, task.image_id, *flag], task.finished)
            info.add_metric([*scope, task.error], 1)
        yield when
        yield info

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def _note_type(self, task_type: str, matches: bool) -> None:
        """Log each task type once: the type an upload creates is not documented."""
        if task_type in self._types or len(self._types) >= _TYPES_LOGGED:
            return
        self._types.add(task_type)
        log.info("task type seen", task_type=task_type, image_task=matches)
