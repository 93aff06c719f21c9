"""Image tasks that failed: an upload that dies before it becomes an image leaves only a task.

A poll lists the ERROR tasks of the watched projects and regions (`GET /cloud/v1/tasks`, paged by
1000: its default page is 10) and keeps those whose type matches the image-task pattern. The API
filters on creation time, so a poll looks back a day further than the window and keeps the tasks
that finished within it (`finished_on`, else `updated_on`, else when first seen). A failed poll
keeps the last known set; either way a task leaves the metrics once the window has passed:

    gcore_gpu_image_task_failed_timestamp_seconds{project_id="1",region_id="10",task_id="…",
        task_type="upload_virtual_image",image_id=""} 1.7e9
    gcore_gpu_image_task_failed_info{project_id="1",region_id="10",task_id="…",error="…"} 1
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.gcore.client import GcoreClient
from exporter.gcore.models import Task, clean_text
from exporter.metrics.families import CACHED_HELP, truncate
from exporter.metrics.scope_health import account_up
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import FetchError, Scope

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
    )


class FailedTasks(Collector):
    def __init__(
        self,
        client: GcoreClient,
        *,
        telemetry: Telemetry,
        registry: CollectorRegistry,
        pattern: str,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._telemetry = telemetry
        self._pattern = re.compile(pattern)
        self._window = window
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

    async def poll(self, scopes: Iterable[Scope]) -> bool:
        """List the failed tasks of `scopes`' projects and regions; True if the listing worked."""
        pairs = {(s.project_id, s.region_id) for s in scopes}
        if not pairs:
            return True
        now = self._now()
        try:
            tasks = await self._client.list_tasks(
                state="ERROR",
                since=datetime.fromtimestamp(now - self._window - LOOKBACK, UTC),
                project_ids={p for p, _ in pairs},
                region_ids={r for _, r in pairs},
            )
        except FetchError as exc:
            account_up(self._telemetry, "tasks", False)
            log.warning(
                "listing failed: the last known set is kept", endpoint="tasks", **exc.log_fields()
            )
            return False
        account_up(self._telemetry, "tasks", True, self._now)
        failed: dict[str, FailedTask] = {}
        first_seen: dict[str, float] = {}
        for task in tasks:
            task_type = task.task_type or ""
            matches = self._pattern.search(task_type) is not None
            self._note_type(task_type, matches)
            if not matches or task.state.upper() != "ERROR":
                continue
            if (task.project_id, task.region_id) not in pairs:
                continue  # the filters are per project and per region: their product is wider
            first_seen[task.id] = self._first_seen.get(task.id, now)
            found = failed_task(task, first_seen[task.id])
            if found is not None:
                failed[task.id] = found
        self._failed, self._first_seen = failed, first_seen
        return True

    def collect(self) -> Iterator[Metric]:
        when = GaugeMetricFamily(
            "gcore_gpu_image_task_failed_timestamp_seconds",
            CACHED_HELP + "When an image task that ended in ERROR finished (finished_on, else "
            "updated_on, else when first seen); present for the failed-task window.",
            labels=["project_id", "region_id", "task_id", "task_type", "image_id"],
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
            when.add_metric([*scope, task.task_type, task.image_id], task.finished)
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
