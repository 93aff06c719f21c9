"""The task behind each image lock, looked up once per task id and interval, shared by all callers.

Many images can be locked by one task, and a listing finds them all at once: concurrent callers
share one lookup. A failed lookup is no answer (None), so the image is still exported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from exporter.gcore.models import Image, Task
from exporter.vocabulary import FetchError

log = structlog.get_logger(__name__)


class TaskCache:
    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Task]],
        *,
        ttl: float,
        on_failure: Callable[[FetchError], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._on_failure = on_failure
        self._now = clock
        self._entries: dict[str, tuple[float, asyncio.Future[Task | None]]] = {}
        # Lookups still running, those dropped from `_entries` by expiry included: all are
        # cancelled on close, before their HTTP session is.
        self._running: set[asyncio.Future[Task | None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    async def lock_of(self, image: Image) -> Task | None:
        """The task holding `image`'s lock; None if unlocked, unknown, or the answer is off."""
        task_id = image.task_id
        if task_id is None or self._closed:  # closed: its session is gone, or about to be
            return None
        entry = self._entries.get(task_id)
        if entry is None or self._now() - entry[0] > self._ttl:
            entry = (self._now(), asyncio.ensure_future(self._fetch(task_id)))
            self._entries[task_id] = entry
            self._running.add(entry[1])
            entry[1].add_done_callback(self._running.discard)
        task = await asyncio.shield(entry[1])
        if task is not None and task.id != task_id:
            return None  # an answer about another task says nothing about this lock
        return task

    def expire(self) -> None:
        """Forget entries older than two lifetimes: tasks end, and their ids never come back."""
        horizon = self._now() - 2 * self._ttl
        for task_id in [t for t, (when, _) in self._entries.items() if when < horizon]:
            del self._entries[task_id]

    async def close(self) -> None:
        self._closed = True
        pending = list(self._running)
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _fetch(self, task_id: str) -> Task | None:
        try:
            return await self._lookup(task_id)
        except FetchError as exc:
            self._on_failure(exc)
            log.info("task lookup failed", task_id=task_id, **exc.log_fields())
            return None
        except Exception as exc:  # its session closed under it (a reload): no answer, no noise
            log.debug("task lookup abandoned", task_id=task_id, problem=type(exc).__name__)
            return None
