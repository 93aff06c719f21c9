"""Per-image state and its transitions: the one place that decides what each image exports.

Transitions, with `now` from the injected clock:

| event                         | values                                  | health                 |
|-------------------------------|-----------------------------------------|------------------------|
| fetch succeeded               | re-rendered from the image              | up 1, last_success now |
| fetch failed, still fresh     | kept                                    | up 0, error counted    |
| fetch failed, older than stale_after, or never fetched | withdrawn      | up 0, error counted    |
| 404                           | withdrawn at once                       | up 0, error counted    |
| absent from a complete listing (discovered image) | the image is removed | gone                 |
| its scope is no longer watched (discovered image) | the image is removed | gone                 |
| no longer covered by a target (a reload)           | the image is removed | gone                 |

`status_since` is `updated_at` when an image is first seen (a status change updates it, and it
survives restarts of the exporter), then the time a new status was first seen; never after now.

It keeps rendered bytes, not the API's models: at 50,000 images, models cost memory and
garbage-collector time that no scrape needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import structlog

from exporter.families import NO_VALUES, render_health, render_values, status_of
from exporter.models import Image, Task
from exporter.vocabulary import FetchError, ImageKey, Kind, Reason, Scope, Targets


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
    status: str | None = None
    status_since: float | None = None


log = structlog.get_logger("exporter.image_store")


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
        self._twins: set[ImageKey] = set()  # logged once each

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def get(self, key: ImageKey) -> ImageState | None:
        return self._states.get(key)

    def add(self, key: ImageKey, *, explicit: bool = False) -> ImageState:
        """The image's state, created (not yet fetched, so down) if it is new.

        An image already listed under the other GPU service keeps its series: both would carry
        the same labels, and a duplicate series fails the whole scrape. The state returned for
        such a twin is not stored.
        """
        state = self._states.get(key)
        if state is None:
            state = ImageState(key, explicit)
            if self._has_twin(key):
                return state
            self._states[key] = state
            self._render_health(state)
        state.explicit = state.explicit or explicit
        return state

    def release(self, key: ImageKey, *, listed: bool) -> None:
        """`key` is no longer a configured image: a listing that covers it now decides whether it
        stays (`listed`), else it goes at once."""
        state = self._states.get(key)
        if state is None:
            return
        if listed:
            state.explicit = False
        else:
            del self._states[key]
            self._on_change()

    def drop_scope(self, scope: Scope) -> int:
        """`scope` is no longer watched: its images leave, except configured ones."""
        return self.retain(scope, ())

    def in_scope(self, scope: Scope) -> Iterator[ImageKey]:
        return (key for key in list(self._states) if key.scope == scope)

    def succeeded(self, key: ImageKey, image: Image, task: Task | None) -> None:
        """`task` is the task holding the image's lock, when the Tasks API told us."""
        state = self.add(key)
        now = self._now()
        status = status_of(image)
        if state.status is None:  # updated_at bounds the change, when Gcore sends it
            first = image.updated_at.timestamp() if image.updated_at is not None else now
            state.status, state.status_since = status, first
        elif status != state.status:
            state.status, state.status_since = status, now
        if image.task_id != state.lock_task_id:
            state.lock_task_id = image.task_id
            state.lock_seen = now if image.task_id is not None else None
        lock_started = state.lock_seen
        if task is not None and task.created_on is not None:
            lock_started = task.created_on.timestamp()
        state.values = render_values(
            key,
            image,
            now=now,
            task=task,
            lock_started=lock_started,
            status_since=min(state.status_since, now) if state.status_since is not None else None,
        )
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
            state.status = state.status_since = None
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

    def _has_twin(self, key: ImageKey) -> bool:
        other: Kind = "baremetal" if key.scope.kind == "virtual" else "virtual"
        if ImageKey(replace(key.scope, kind=other), key.image_id) not in self._states:
            return False
        if key not in self._twins:
            self._twins.add(key)
            log.warning(
                "image listed by both GPU services: kept under the first",
                project_id=key.scope.project_id,
                region_id=key.scope.region_id,
                image_id=key.image_id,
                ignored_kind=key.scope.kind,
            )
        return True

    def follow(self, targets: Targets) -> int:
        """Keep the images `targets` cover, with their state; add configured images; drop others.

        An image keeps its series across a change of targets; whether it is configured (always
        exported) or discovered (exported while listed) follows the new targets. Returns how many
        images were dropped.
        """
        explicit, scopes = set(targets.images), {*targets.scopes, *targets.discovered}
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
