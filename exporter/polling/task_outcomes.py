"""Which image tasks the pipeline's counters count: each once, when first seen finished.

A subscriber of the Tasks feed (`task_feed`). The rule, for `increase()` to mean what it says:

- An image task (its type matches the image-task pattern) counts once, in the poll that first
  lists it FINISHED or ERROR; its id is remembered, so no later poll, page or reload counts it
  again (the state lives in the monitor, which outlives every poller).
- The first successful poll of a project and region is its baseline: the tasks it lists already
  finished are remembered, not counted (they are history, not news). So a restart counts nothing
  twice, and neither does a scope that a reload or discovery adds, nor a reload that changes the
  pattern (every scope starts a new baseline then).
- Memory is bounded: an id is forgotten once a poll no longer lists it and the task was created
  (or, without `created_on`, first seen) before the horizon, now - lookback - `MARGIN`. The
  horizon only moves forward, and a task created before it is never counted: listed again after
  its window (a longer window after a reload, Gcore's own boundary), it is old news.
- An image task that runs for longer than the feed's lookback is never seen finished.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from exporter.gcore.models import Task, clean_text
from exporter.metrics.task_outcomes import FINISHED_STATES, OutcomeKey, OutcomeTally
from exporter.polling.task_feed import Consumer
from exporter.vocabulary import Targets

MARGIN: Final = 3600.0
"""How much longer than the feed's lookback an id is remembered: Gcore's clock and ours differ."""
SDK_IMAGE_TASK_TYPES: Final = ("create_image", "download_image", "delete_image")
MAX_TASK_TYPES: Final = 16
"""Task types beyond this many (Gcore's types are few; the pattern is the user's) count as
`OTHER_TYPE`, so that no label value comes from an unbounded set."""
OTHER_TYPE: Final = "other"

Pair = tuple[int, int]


def watched_pairs(targets: Targets) -> set[Pair]:
    """The projects and regions of every scope polled for `targets`."""
    scopes = {*targets.scopes, *targets.discovered, *(key.scope for key in targets.images)}
    return {(scope.project_id, scope.region_id) for scope in scopes}


class TaskOutcomes:
    """The once-only state behind `OutcomeTally`; one per process (see the module's rule)."""

    def __init__(self, tally: OutcomeTally) -> None:
        self._tally = tally
        self._seen: dict[str, float] = {}  # task id: created_on, else when first seen
        self._horizon = float("-inf")
        self._baselined: set[Pair] = set()
        self._pattern = ""
        self._types: set[str] = set()

    def __len__(self) -> int:
        """How many task ids are remembered."""
        return len(self._seen)

    def subscriber(
        self, *, pattern: str, lookback: float, watched: Callable[[], Iterable[Pair]]
    ) -> Consumer:
        """What a poller's feed hands its polls to; `watched` tells the pairs it polls now."""
        compiled = re.compile(pattern)

        def take(tasks: Sequence[Task], now: float) -> None:
            self.take(tasks, now, pattern=compiled, lookback=lookback, pairs=set(watched()))

        return take

    def take(
        self,
        tasks: Sequence[Task],
        now: float,
        *,
        pattern: re.Pattern[str],
        lookback: float,
        pairs: set[Pair],
    ) -> None:
        """Count the image tasks of one poll of `pairs` that are news."""
        if pattern.pattern != self._pattern:
            self._pattern, self._baselined = pattern.pattern, set()
        self._horizon = max(self._horizon, now - lookback - MARGIN)
        listed: set[str] = set()
        for task in tasks:
            state, task_type = task.state.upper(), clean_text(task.task_type or "")
            if task.project_id is None or task.region_id is None or state not in FINISHED_STATES:
                continue
            if pattern.search(task_type) is None:
                continue
            pair, label = (task.project_id, task.region_id), self._type(task_type)
            listed.add(task.id)
            if task.id in self._seen:
                continue
            created = task.created_on.timestamp() if task.created_on is not None else now
            self._seen[task.id] = created
            if created < self._horizon or pair not in self._baselined or pair not in pairs:
                continue  # old news, or the baseline of its project and region
            self._tally.record(OutcomeKey(*pair, label, state), duration(task))
        self._baselined = pairs
        self._seen = {k: v for k, v in self._seen.items() if k in listed or v >= self._horizon}
        types = [t for t in SDK_IMAGE_TASK_TYPES if pattern.search(t)]
        self._tally.keep(pairs, sorted({*types, *(t for t in self._types if pattern.search(t))}))

    def _type(self, task_type: str) -> str:
        if task_type not in self._types and len(self._types) >= MAX_TASK_TYPES:
            return OTHER_TYPE
        self._types.add(task_type)
        return task_type


def duration(task: Task) -> float | None:
    """Seconds from creation to end, if Gcore sent both times."""
    if task.created_on is None or task.finished_on is None:
        return None
    return (task.finished_on - task.created_on).total_seconds()
