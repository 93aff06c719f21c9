"""The Tasks feed: one account-wide listing of recent tasks, every state, for whoever needs them.

A poll lists the tasks created within `lookback` in the watched projects and regions
(`GET /cloud/v1/tasks`, paged by 1000: its default page is 10; no `state` filter, so image tasks
that run, finish or fail are all seen) and hands them to each subscriber: the failed image tasks,
the scope cadence (a new image task wakes its scope), and any later consumer. Gcore's timestamps
are untrusted: one in the future is clamped to the poll's time, so that nothing looks recent
forever. A malformed task is skipped by the client (and counted), never the whole listing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import structlog

from exporter.gcore.client import GcoreClient
from exporter.gcore.models import Task
from exporter.metrics.scope_health import account_up
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import FetchError, Scope

log = structlog.get_logger("exporter.polling.task_feed")

Consumer = Callable[[Sequence[Task], float], None]
"""Takes the tasks of one successful poll (of the watched projects and regions) and its time."""


def clamped(task: Task, now: datetime) -> Task:
    """`task` with any timestamp later than `now` moved back to `now`."""
    late = {
        name: now
        for name in ("created_on", "updated_on", "finished_on", "acknowledged_at")
        if (when := getattr(task, name)) is not None and when > now
    }
    return task.model_copy(update=late) if late else task


class TaskFeed:
    def __init__(
        self,
        client: GcoreClient,
        *,
        telemetry: Telemetry,
        lookback: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._telemetry = telemetry
        self._lookback = lookback
        self._now = clock
        self._consumers: list[Consumer] = []

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    async def poll(self, scopes: Iterable[Scope]) -> bool:
        """List the recent tasks of `scopes`' projects and regions and hand them to every
        subscriber; True if the listing worked (a failed one hands nothing: each keeps what it
        knew)."""
        pairs = {(s.project_id, s.region_id) for s in scopes}
        if not pairs:
            return True
        now = self._now()
        try:
            tasks = await self._client.list_tasks(
                since=datetime.fromtimestamp(now - self._lookback, UTC),
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
        moment = datetime.fromtimestamp(now, UTC)
        # the filters are per project and per region: their product is wider than the pairs
        mine = [clamped(t, moment) for t in tasks if (t.project_id, t.region_id) in pairs]
        for consumer in self._consumers:
            consumer(mine, now)
        return True
