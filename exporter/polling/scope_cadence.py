"""How often each watched scope is listed: API calls follow the images, not the scopes that exist.

Gcore limits requests per account, a budget shared with the users' own automation, and most
project x region x kind scopes of an account hold no image. So the last listing of a scope sets
its cadence:

| cadence       | last listing               | listed again                                     |
|---------------|----------------------------|--------------------------------------------------|
| `images`      | held at least one image    | every round                                      |
| `failing`     | failed                     | every round                                      |
| `empty`       | whole, and held nothing    | after `relist_after` (the discovery interval),   |
|               |                            | or at once when an image task shows up in its    |
|               |                            | project and region (`wake`)                      |
| `unavailable` | 404 for a discovered scope | after `relist_after` (the next discovery)        |

A scope never listed is due at once: its first listing is the probe that decides whether the
region serves that kind of GPU image (capability flags are only hints). The Tasks feed calls
`take`: a `create_image`, `download_image` or GPU upload task that is new or changed state since
the last poll wakes the scopes of its project and region, so a new image appears within a round
of its task.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Collection, Sequence
from typing import Final, Literal, get_args

from exporter.gcore.models import Task
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import Scope

Cadence = Literal["images", "failing", "empty", "unavailable"]
CADENCES: Final[tuple[Cadence, ...]] = get_args(Cadence)
CREATING: Final = re.compile(r"^(create|download)_image$|^upload_\w*image$")
"""Task types that bring an image into a scope: the SDK's `create_image` and `download_image`,
and GPU image uploads (whose type the SDK does not name; `upload_*image` is assumed)."""


class ScopeCadence:
    def __init__(
        self,
        *,
        interval: float,
        relist_after: float,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._interval = interval
        self._relist_after = relist_after
        self._now = clock
        self._last: dict[Scope, tuple[Cadence, float]] = {}  # cadence and time of last listing
        self._woken: set[Scope] = set()
        self._wakes: dict[Scope, int] = {}  # how often each was woken: what clusters follow
        self._task_states: dict[str, str] = {}  # image tasks of the last feed poll
        if telemetry is not None:
            for cadence in CADENCES:
                telemetry.scope_cadence.labels(cadence).set_function(
                    functools.partial(self.count, cadence)
                )
                telemetry.scope_listing_interval.labels(cadence).set(self.every(cadence))

    def every(self, cadence: Cadence) -> float:
        """Seconds between two listings of a scope of `cadence` (unless woken)."""
        if cadence in ("images", "failing"):
            return self._interval
        return max(self._relist_after, self._interval)  # a round is the finest grain

    def count(self, cadence: Cadence) -> int:
        return sum(1 for state, _ in self._last.values() if state == cadence)

    def cadence(self, scope: Scope) -> Cadence | None:
        entry = self._last.get(scope)
        return entry[0] if entry is not None else None

    def adopt(self, previous: ScopeCadence) -> None:
        """Take over what the cadence this one replaces (a reload) knew."""
        self._last = dict(previous._last)
        self._woken = set(previous._woken)
        self._wakes = dict(previous._wakes)
        self._task_states = dict(previous._task_states)

    def due(self, scope: Scope) -> bool:
        """Whether a round starting now lists `scope`."""
        entry = self._last.get(scope)
        if entry is None or scope in self._woken:
            return True
        cadence, listed = entry
        if cadence in ("images", "failing"):
            return True
        # half a round of slack: a round that starts a little early must not wait a whole round
        return self._now() - listed >= self.every(cadence) - self._interval / 2

    def listed(self, scope: Scope, cadence: Cadence) -> None:
        """Record how a listing of `scope` went."""
        self._last[scope] = (cadence, self._now())
        self._woken.discard(scope)

    def retain(self, watched: Collection[Scope]) -> None:
        """Forget the scopes no longer watched."""
        for scope in [s for s in self._last if s not in watched]:
            del self._last[scope]
        self._woken &= set(watched)
        for scope in [s for s in self._wakes if s not in watched]:
            del self._wakes[scope]

    def wakes(self, scope: Scope) -> int:
        """How often `scope` was woken: a listing of what else it holds (its GPU clusters) that
        rests with the scope is due again when this changes."""
        return self._wakes.get(scope, 0)

    def wake(self, project_id: int, region_id: int) -> None:
        """List the known scopes of this project and region (every kind) in the next round."""
        woken = [s for s in self._last if (s.project_id, s.region_id) == (project_id, region_id)]
        self._woken.update(woken)
        for scope in woken:
            self._wakes[scope] = self._wakes.get(scope, 0) + 1

    def take(self, tasks: Sequence[Task], now: float) -> None:
        """A subscriber of the Tasks feed: an image-creating task new or changed since the last
        poll wakes its scopes."""
        states: dict[str, str] = {}
        for task in tasks:
            if task.project_id is None or task.region_id is None:
                continue
            if CREATING.search(task.task_type or "") is None:
                continue
            states[task.id] = task.state
            if self._task_states.get(task.id) != task.state:
                self.wake(task.project_id, task.region_id)
        self._task_states = states
