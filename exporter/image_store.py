"""Per-image state and its transitions: the one place that decides what each image exports.

Transitions, with `now` from the injected clock:

| event                         | values                                  | health                 |
|-------------------------------|-----------------------------------------|------------------------|
| fetch succeeded               | re-rendered from the image              | up 1, last_success now |
| fetch failed, still fresh     | kept                                    | up 0, error counted    |
| fetch failed, older than stale_after, or never fetched | withdrawn      | up 0, error counted    |
| 404                           | withdrawn at once                       | up 0, error counted    |
| absent from a complete listing (discovered image) | the image is removed | gone                 |
| no longer covered by a target (a reload)           | the image is removed | gone                 |

It keeps rendered bytes, not the API's models: at 50,000 images, models cost memory and
garbage-collector time that no scrape needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import MappingProxyType

from exporter.families import NO_VALUES, render_health, render_values
from exporter.models import Image, Task
from exporter.vocabulary import FetchError, ImageKey, Reason, Scope, Targets


@dataclass(slots=True)
class ImageState:
    key: ImageKey
    explicit: bool
    up: bool = False
    last_success: float | None = None
    errors: dict[Reason, int] = field(default_factory=dict)
    last_error: Reason | None = None
    lock_task_id: str | None = None
    lock_seen: float | None = None
    values: tuple[bytes, ...] = NO_VALUES
    rendered: tuple[bytes, ...] = ()


class ImageStore:
    def __init__(
        self,
        *,
        stale_after: float,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.stale_after = stale_after  # a reload may change it
        self._now = clock
        self._on_change = on_change
        self._states: dict[ImageKey, ImageState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def get(self, key: ImageKey) -> ImageState | None:
        return self._states.get(key)

    def add(self, key: ImageKey, *, explicit: bool = False) -> ImageState:
        """The image's state, created (not yet fetched, so down) if it is new."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = ImageState(key, explicit)
            self._render_health(state)
        return state

    def in_scope(self, scope: Scope) -> Iterator[ImageKey]:
        return (key for key in list(self._states) if key.scope == scope)

    def succeeded(self, key: ImageKey, image: Image, task: Task | None) -> None:
        """`task` is the task holding the image's lock, when the Tasks API told us."""
        state = self.add(key)
        now = self._now()
        if image.task_id != state.lock_task_id:
            state.lock_task_id = image.task_id
            state.lock_seen = now if image.task_id is not None else None
        lock_started = state.lock_seen
        if task is not None and task.created_on is not None:
            lock_started = task.created_on.timestamp()
        state.values = render_values(key, image, now=now, task=task, lock_started=lock_started)
        state.up, state.last_success, state.last_error = True, now, None
        self._render_health(state)

    def failed(self, key: ImageKey, error: FetchError) -> None:
        state = self.add(key)
        now = self._now()
        state.up, state.last_error = False, error.reason
        state.errors[error.reason] = state.errors.get(error.reason, 0) + 1
        stale = state.last_success is None or now - state.last_success > self.stale_after
        if error.reason == "not_found" or stale:
            state.values = NO_VALUES
            state.lock_task_id = state.lock_seen = None
        self._render_health(state)

    def retain(self, scope: Scope, listed: Iterable[ImageKey]) -> int:
        """After a complete listing of `scope`: drop its discovered images that were not listed."""
        keep = set(listed)
        gone = [k for k in self.in_scope(scope) if k not in keep and not self._states[k].explicit]
        for key in gone:
            del self._states[key]
        if gone:
            self._on_change()
        return len(gone)

    def follow(self, targets: Targets) -> int:
        """Keep the images `targets` cover, with their state; add configured images; drop others.

        An image keeps its series across a change of targets; whether it is configured (always
        exported) or discovered (exported while listed) follows the new targets. Returns how many
        images were dropped.
        """
        explicit, scopes = set(targets.images), set(targets.scopes)
        gone = [k for k in self._states if k not in explicit and k.scope not in scopes]
        for key in gone:
            del self._states[key]
        for state in self._states.values():
            state.explicit = state.key in explicit
        for key in targets.images:
            self.add(key, explicit=True)
        if gone:
            self._on_change()
        return len(gone)

    def failing(self) -> int:
        return sum(1 for state in self._states.values() if not state.up)

    def rendered(self) -> tuple[tuple[bytes, ...], ...]:
        """Every image's chunks, indexed like `FAMILIES`, in a stable order."""
        return tuple(state.rendered for state in self._states.values())

    def _render_health(self, state: ImageState) -> None:
        health = render_health(
            state.key,
            up=state.up,
            last_success=state.last_success,
            errors=MappingProxyType(state.errors),
            last_error=state.last_error,
        )
        state.rendered = state.values + health
        self._on_change()
