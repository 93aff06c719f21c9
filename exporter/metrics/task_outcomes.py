"""The image pipeline's outcomes: how many image tasks finished, in which state, and how long
they took. Which tasks count is `polling.task_outcomes`' decision; this holds the tallies and
renders them, one series per project, region, task type and state (never one per task):

    gcore_gpu_image_tasks_finished_total{project_id="1",region_id="10",task_type="download_image",
        state="ERROR"} 3
    gcore_gpu_image_task_duration_seconds_bucket{project_id="1",region_id="10",
        task_type="download_image",state="ERROR",le="300.0"} 2
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

DURATION_BUCKETS: Final = (60.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
"""Seconds from a task's creation to its end. A GPU image upload from a URL copies several GB
(minutes), a large one converts for up to an hour or two; 15 min is the usual SLO, 4 h a stuck
upload. Few buckets: each is one series per project, region, task type and state."""
FINISHED_STATES: Final = ("FINISHED", "ERROR")
LABELS: Final = ("project_id", "region_id", "task_type", "state")


class OutcomeKey(NamedTuple):
    project_id: int
    region_id: int
    task_type: str
    state: str


@dataclass(slots=True)
class Outcome:
    finished: int = 0  # every task, with or without a duration
    observed: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    seconds: float = 0.0  # the sum of the durations observed


class OutcomeTally(Collector):
    """Counts of finished image tasks and a histogram of their durations, per `OutcomeKey`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._outcomes: dict[OutcomeKey, Outcome] = {}
        registry.register(self)

    def record(self, key: OutcomeKey, duration: float | None) -> None:
        """One more finished task; a `duration` None or negative (untrusted times) is not
        observed."""
        outcome = self._outcomes.setdefault(key, Outcome())
        outcome.finished += 1
        if duration is not None and duration >= 0:
            outcome.observed[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
            outcome.seconds += duration

    def keep(self, pairs: Iterable[tuple[int, int]], task_types: Iterable[str]) -> None:
        """Series at 0 for every state of `task_types` in each of `pairs` (so that a ratio has a
        denominator before the first failure); the series of any other pair leave."""
        pairs, task_types = set(pairs), tuple(task_types)
        self._outcomes = {k: v for k, v in self._outcomes.items() if k[:2] in pairs}
        for project_id, region_id in pairs:
            for task_type in task_types:
                for state in FINISHED_STATES:
                    key = OutcomeKey(project_id, region_id, task_type, state)
                    self._outcomes.setdefault(key, Outcome())

    def collect(self) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "gcore_gpu_image_tasks_finished",
            "Image tasks (see task_type) counted once, when first seen in a final state"
            " (FINISHED or ERROR); those that had finished before the exporter started watching"
            " their project and region are not counted.",
            labels=LABELS,
        )
        durations = HistogramMetricFamily(
            "gcore_gpu_image_task_duration_seconds",
            "Time from creation to end (finished_on - created_on) of the image tasks counted in"
            " gcore_gpu_image_tasks_finished_total that carry both times.",
            labels=LABELS,
        )
        for key, outcome in sorted(self._outcomes.items()):
            labels = [str(key.project_id), str(key.region_id), key.task_type, key.state]
            finished.add_metric(labels, outcome.finished)
            cumulative, buckets = 0, []
            bounds = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")
            for bound, count in zip(bounds, outcome.observed, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric(labels, buckets, outcome.seconds)
        yield finished
        yield durations

    def describe(self) -> Iterator[Metric]:
        return self.collect()
