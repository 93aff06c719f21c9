"""Per-image state and its transitions: the one place that decides what each image exports.

Transitions, with `now` from the injected clock:

| event                         | values                                  | health                 |
|-------------------------------|-----------------------------------------|------------------------|
| fetch succeeded               | re-rendered from the image              | up 1, last_success now |
| fetch failed, still fresh     | kept                                    | up 0, error counted    |
| fetch failed, older than stale_after, or never fetched | withdrawn      | up 0, error counted    |
| 404                           | withdrawn at once                       | up 0, error counted    |
| absent from a complete listing (discovered image) | the image is removed | gone                 |

It keeps rendered bytes, not the API's models: at 50,000 images, models cost memory and
garbage-collector time that no scrape needs. The bytes live in `Blocks`, family-major, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from types import MappingProxyType

from exporter.blocks import Block, Blocks
from exporter.families import FAMILIES, NO_VALUES, VALUE_FAMILIES, render_health, render_values
from exporter.models import Image, Task
from exporter.vocabulary import FetchError, ImageKey, Reason, Scope


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
    block: Block | None = None  # where its lines are, once placed

    @property
    def values(self) -> tuple[bytes, ...]:
        """The lines of its value families, as exported now."""
        assert self.block is not None
        return self.block.chunks(self.key)[: len(VALUE_FAMILIES)]


class ImageStore:
    def __init__(
        self,
        *,
        stale_after: float,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._stale_after = stale_after
        self._now = clock
        self._on_change = on_change
        self._states: dict[ImageKey, ImageState] = {}
        self._blocks = Blocks(len(FAMILIES))

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
            self._render(state, NO_VALUES)
        return state

    def in_scope(self, scope: Scope) -> Iterator[ImageKey]:
        # `is` first: the keys of a listing share its scope object, and dataclass `==` is slow
        return (key for key in list(self._states) if key.scope is scope or key.scope == scope)

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
        state.up, state.last_success, state.last_error = True, now, None
        self._render(
            state, render_values(key, image, now=now, task=task, lock_started=lock_started)
        )

    def failed(self, key: ImageKey, error: FetchError) -> None:
        state = self.add(key)
        now = self._now()
        state.up, state.last_error = False, error.reason
        state.errors[error.reason] = state.errors.get(error.reason, 0) + 1
        stale = state.last_success is None or now - state.last_success > self._stale_after
        if error.reason == "not_found" or stale:
            state.lock_task_id = state.lock_seen = None
            self._render(state, NO_VALUES)
        else:
            self._render(state, None)

    def retain(self, scope: Scope, listed: Collection[str]) -> int:
        """After a complete listing of `scope` (the ids it held): drop its discovered images that
        were not listed."""
        states = self._states
        gone = [
            k for k in self.in_scope(scope) if k.image_id not in listed and not states[k].explicit
        ]
        removed = [states.pop(key) for key in gone]
        self._blocks.remove((state.block, state.key) for state in removed if state.block)
        if gone:
            self._on_change()
        return len(gone)

    def failing(self) -> int:
        return sum(1 for state in self._states.values() if not state.up)

    async def settle(self, *, ripe_only: bool = False) -> None:
        """Fold what was staged into the blocks, letting the event loop run in between;
        `ripe_only`: just the blocks whose every image was re-rendered (see `Blocks.settle`)."""
        await self._blocks.settle(ripe_only=ripe_only)

    async def blocks(self) -> tuple[tuple[bytes, ...], ...]:
        """Every block's lines, indexed like `FAMILIES`, images in a stable order."""
        await self._blocks.settle()
        return self._blocks.view()

    def rendered(self) -> tuple[tuple[bytes, ...], ...]:
        """`blocks()` folded at once: for small stores and tests."""
        self._blocks.settle_now()
        return self._blocks.view()

    def _render(self, state: ImageState, values: tuple[bytes, ...] | None) -> None:
        """Render health; stage it with `values` (None: keep the values as they are)."""
        health = render_health(
            state.key,
            up=state.up,
            last_success=state.last_success,
            errors=MappingProxyType(state.errors),
            last_error=state.last_error,
        )
        if state.block is None:
            assert values is not None
            state.block = self._blocks.place(state.key, values + health)
        else:
            kept = (None,) * len(VALUE_FAMILIES) if values is None else values
            self._blocks.stage(state.block, state.key, kept + health)
        self._on_change()
