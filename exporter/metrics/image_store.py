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
garbage-collector time that no scrape needs. The bytes live in `Blocks`, family-major, once; the
store alone decides when staged lines are folded into them (`after_fetch`, `after_page`, `lines`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

import structlog

from exporter.gcore.models import Image, Task
from exporter.metrics.blocks import Block, Blocks
from exporter.metrics.cluster_families import NO_CLUSTERS, ClusterCounts
from exporter.metrics.families import (
    FAMILIES,
    HEALTH_FAMILIES,
    NO_VALUES,
    SHOW_ALL,
    USAGE_FAMILIES,
    VALUE_FAMILIES,
    Shown,
    render_health,
    render_usage,
    render_values,
    status_of,
)
from exporter.metrics.snapshot import FamilyLines, by_family
from exporter.vocabulary import FetchError, ImageKey, Reason, Scope, Targets

log = structlog.get_logger(__name__)
_KEEP_USAGE: Final = (None,) * len(USAGE_FAMILIES)  # a fetch leaves the cluster count as it is
_KEEP_FETCHED: Final = (None,) * (len(VALUE_FAMILIES) + len(HEALTH_FAMILIES))  # and vice versa


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
    status: str | None = None
    status_since: float | None = None
    clusters: int | None = None  # clusters booting from it; None while unknown
    block: Block | None = None  # where its lines are, once placed

    @property
    def values(self) -> tuple[bytes, ...]:
        """The lines of its value families, as exported now."""
        assert self.block is not None
        return self.block.chunks(self.key)[: len(VALUE_FAMILIES)]

    def health(self, shown: Shown) -> tuple[bytes, ...]:
        """The lines of its health families, as of now."""
        return render_health(
            self.key,
            up=self.up,
            last_success=self.last_success,
            errors=MappingProxyType(self.errors),
            last_error=self.last_error,
            shown=shown,
        )

    def usage(self, shown: Shown) -> tuple[bytes, ...]:
        """The lines of what uses it (its clusters), as last counted."""
        return render_usage(self.key, self.clusters, shown)

    def fail(self, reason: Reason, now: float, stale_after: float) -> bool:
        """Count a failed fetch; True if its values are withdrawn: a 404, or none fetched within
        `stale_after`."""
        self.up, self.last_error = False, reason
        self.errors[reason] = self.errors.get(reason, 0) + 1
        stale = self.last_success is None or now - self.last_success > stale_after
        if reason == "not_found" or stale:
            self.lock_task_id = self.lock_seen = None
            self.status = self.status_since = None
            return True
        return False


class ImageStore:
    def __init__(
        self,
        *,
        stale_after: float,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        shown: Shown = SHOW_ALL,
    ) -> None:
        self.stale_after = stale_after  # a reload may change it
        self.shown = shown  # fixed for the store's life: rendered lines are kept
        self._now = clock
        self._on_change = on_change
        self._states: dict[ImageKey, ImageState] = {}
        self._blocks = Blocks(len(FAMILIES))
        self._twins: set[ImageKey] = set()  # logged once each
        self._lines = _Lines(self._blocks, shown, on_change)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def keys(self) -> list[ImageKey]:
        """Every image watched now (a copy: polls may change the store meanwhile)."""
        return list(self._states)

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
            if _has_twin(self._states, self._twins, key):
                return state
            self._states[key] = state
            self._lines.render(state, NO_VALUES)
        state.explicit = state.explicit or explicit
        return state

    def in_scope(self, scope: Scope) -> Iterator[ImageKey]:
        # `is` first: the keys of a listing share its scope object, and dataclass `==` is slow
        return (key for key in list(self._states) if key.scope is scope or key.scope == scope)

    def succeeded(self, key: ImageKey, image: Image, task: Task | None) -> None:
        """`task` is the task holding the image's lock, when the Tasks API told us."""
        state = self.add(key)
        if state.block is None:  # a twin: not exported
            return
        now = self._now()
        values = _observe(state, image, task, now, self.shown)
        state.up, state.last_success, state.last_error = True, now, None
        self._lines.render(state, values)

    def failed(self, key: ImageKey, error: FetchError) -> None:
        state = self.add(key)
        if state.block is None:  # a twin: not exported
            return
        withdrawn = state.fail(error.reason, self._now(), self.stale_after)
        self._lines.render(state, NO_VALUES if withdrawn else None)

    def retain(self, scope: Scope, listed: Collection[str]) -> int:
        """After a complete listing of `scope` (the ids it held): drop its discovered images that
        were not listed."""
        states = self._states
        return self._drop(
            k for k in self.in_scope(scope) if k.image_id not in listed and not states[k].explicit
        )

    def drop_scope(self, scope: Scope) -> int:
        """`scope` is no longer watched: its images leave, except configured ones."""
        return self.retain(scope, ())

    def release(self, key: ImageKey, *, listed: bool) -> None:
        """`key` is no longer a configured image: a listing that covers it now decides whether it
        stays (`listed`), else it goes at once."""
        state = self._states.get(key)
        if state is not None and listed:
            state.explicit = False
        elif state is not None:
            self._drop([key])

    def follow(self, targets: Targets) -> int:
        """Keep the images `targets` cover, with their state; add configured images; drop others.

        An image keeps its series across a change of targets; whether it is configured (always
        exported) or discovered (exported while listed) follows the new targets. Returns how many
        images were dropped.
        """
        explicit, scopes = set(targets.images), {*targets.scopes, *targets.discovered}
        dropped = self._drop(k for k in self._states if k not in explicit and k.scope not in scopes)
        for state in self._states.values():
            state.explicit = state.key in explicit
        for key in targets.images:
            self.add(key, explicit=True)
        return dropped

    def count_clusters(self, clusters: ClusterCounts) -> int:
        """What the cluster poll found: only the images whose count changed are re-rendered, so
        a publication costs nothing per image. Returns how many changed."""
        return self._lines.count_clusters(self._states.values(), clusters)

    def failing(self) -> int:
        return sum(1 for state in self._states.values() if not state.up)

    async def after_fetch(self) -> None:
        """An image's fetch ended: fold the blocks a round has re-rendered whole (a plain join),
        unless a fold is running; so no block's staged chunks pile up between snapshots."""
        await self._blocks.settle(ripe_only=True)

    async def after_page(self) -> None:
        """A listing's page is in: fold all it staged, so a long listing piles up no chunks."""
        await self._blocks.settle()

    async def lines(self) -> tuple[FamilyLines, ...]:
        """Each family with its lines, what was staged folded first; images in a stable order."""
        await self._blocks.settle()
        hidden = self.shown.hidden
        return tuple(
            lines
            for index, lines in enumerate(by_family(self._blocks.view(), FAMILIES))
            if index not in hidden  # a family the selection leaves out: not even a header
        )

    def rendered(self) -> tuple[tuple[bytes, ...], ...]:
        """Every block's lines, one part per family of `FAMILIES`, folded at once: for small
        stores and tests."""
        self._blocks.settle_now()
        return self._blocks.view()

    def _drop(self, keys: Iterable[ImageKey]) -> int:
        removed = [self._states.pop(key) for key in list(keys)]
        self._blocks.remove((state.block, state.key) for state in removed if state.block)
        if removed:
            self._on_change()
        return len(removed)


def _observe(
    state: ImageState, image: Image, task: Task | None, now: float, shown: Shown
) -> tuple[bytes, ...]:
    """Follow the image's status and lock (when each was first seen as it is now); its values."""
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
    since = min(state.status_since, now) if state.status_since is not None else None
    return render_values(
        state.key, image, shown, now=now, task=task, lock_started=lock_started, status_since=since
    )


class _Lines:
    """Each image's lines in the blocks: placed whole when it is first seen, then only the part
    that changed staged. It keeps the clusters' last count: a new image starts with its count,
    and a new count re-renders only the images whose count it changes."""

    def __init__(self, blocks: Blocks, shown: Shown, on_change: Callable[[], None]) -> None:
        self._blocks, self._shown, self._on_change = blocks, shown, on_change
        self._clusters = NO_CLUSTERS

    def render(self, state: ImageState, values: tuple[bytes, ...] | None) -> None:
        """Render health; stage it with `values` (None: keep the values as they are)."""
        health = state.health(self._shown)
        if state.block is None:
            assert values is not None
            state.clusters = self._clusters.of(state.key)
            usage = state.usage(self._shown)
            state.block = self._blocks.place(state.key, values + health + usage)
        else:
            kept = (None,) * len(VALUE_FAMILIES) if values is None else values
            self._blocks.stage(state.block, state.key, kept + health + _KEEP_USAGE)
        self._on_change()

    def count_clusters(self, states: Iterable[ImageState], clusters: ClusterCounts) -> int:
        """Stage the usage of the placed images whose count `clusters` changes; how many."""
        self._clusters = clusters
        changed = 0
        for state in states:
            count = clusters.of(state.key)
            if count != state.clusters and state.block is not None:
                state.clusters = count
                usage = _KEEP_FETCHED + state.usage(self._shown)
                self._blocks.stage(state.block, state.key, usage)
                changed += 1
        if changed:
            self._on_change()
        return changed


def _has_twin(states: Collection[ImageKey], logged: set[ImageKey], key: ImageKey) -> bool:
    """Whether the image is already known under the other GPU service (logged once a key)."""
    other = replace(key.scope, kind="baremetal" if key.scope.kind == "virtual" else "virtual")
    if ImageKey(other, key.image_id) not in states:
        return False
    if key not in logged:
        logged.add(key)
        log.warning(
            "image listed by both GPU services: kept under the first",
            project_id=key.scope.project_id,
            region_id=key.scope.region_id,
            image_id=key.image_id,
            ignored_kind=key.scope.kind,
        )
    return True
