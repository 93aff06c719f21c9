"""What one target costs: a GET for an explicit image, every page of a listing for a scope.

Results land in the image store; the task behind each lock comes from the task cache. The
scheduler decides when; this module decides what a fetch means for the images it touches.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog

from exporter.client import GcoreClient
from exporter.image_store import ImageStore
from exporter.task_cache import TaskCache
from exporter.telemetry import Telemetry
from exporter.vocabulary import YIELD_EVERY, FetchError, ImageKey, Scope, Targets

log = structlog.get_logger("exporter.fetcher")

Target = ImageKey | Scope
NO_TARGETS: Final = Targets((), ())


class Fetcher:
    def __init__(
        self,
        client: GcoreClient,
        *,
        store: ImageStore,
        tasks: TaskCache,
        telemetry: Telemetry,
    ) -> None:
        self._client = client
        self._store = store
        self._tasks = tasks
        self._telemetry = telemetry

    def register(self, targets: Targets, previous: Targets = NO_TARGETS) -> None:
        """Follow `targets` instead of `previous`: the store keeps only the images they cover.

        Explicit images exist (down) and new scopes are undiscovered until their first fetch;
        scopes that stay keep their discovery state, and dropped ones leave the metrics.
        """
        self._store.follow(targets)
        kept = set(targets.scopes)
        for scope in previous.scopes:
            if scope not in kept:
                self._telemetry.discovery_up.remove(str(scope.project_id), str(scope.region_id))
        for scope in kept - set(previous.scopes):
            self._telemetry.discovery_up.labels(str(scope.project_id), str(scope.region_id)).set(0)

    async def fetch(self, target: Target) -> bool:
        """Fetch one target into the store; True if it succeeded."""
        try:
            if isinstance(target, ImageKey):
                return await self._fetch_image(target)
            return await self._discover(target)
        except Exception as exc:  # a bug must cost one fetch, never the poll loop
            log.exception("unexpected error while polling", target=repr(target))
            if isinstance(target, ImageKey):
                problem = FetchError("invalid_response", f"unexpected {type(exc).__name__}")
                self._store.failed(target, problem)
            return False

    def round_done(self) -> None:
        self._tasks.expire()

    async def close(self) -> None:
        await self._tasks.close()

    async def _fetch_image(self, key: ImageKey) -> bool:
        try:
            image = await self._client.get_image(key)
        except FetchError as exc:
            self._store.failed(key, exc)
            scope = key.scope
            log.warning(
                "fetch failed",
                project_id=scope.project_id,
                region_id=scope.region_id,
                image_id=key.image_id,
                **exc.log_fields(),
            )
            return False
        self._store.succeeded(key, image, await self._tasks.lock_of(image))
        return True

    async def _discover(self, scope: Scope) -> bool:
        labels = (str(scope.project_id), str(scope.region_id))
        seen: set[ImageKey] = set()
        try:
            complete = await self._absorb_listing(scope, seen)
            if not complete:  # the list changed under our pages: once more
                complete = await self._absorb_listing(scope, seen)
        except FetchError as exc:
            self._telemetry.discovery_up.labels(*labels).set(0)
            log.warning(
                "listing failed", project_id=labels[0], region_id=labels[1], **exc.log_fields()
            )
            for key in self._store.in_scope(scope):
                if key not in seen:  # images of pages that did come are fresh
                    self._store.failed(key, exc)
            return False
        self._telemetry.discovery_up.labels(*labels).set(1)
        if complete:  # only a complete listing proves that an image is gone
            self._store.retain(scope, seen)
        return True

    async def _absorb_listing(self, scope: Scope, seen: set[ImageKey]) -> bool:
        """Take in every page of a scope's list; True if it held still while being paged."""
        counts: set[int] = set()
        listed: set[ImageKey] = set()
        nameless = 0
        async for page in self._client.list_pages(scope):
            counts.add(page.count)
            locked = [image for image in page.images if image.task_id is not None]
            found = await asyncio.gather(*(self._tasks.lock_of(image) for image in locked))
            tasks = {image.id: task for image, task in zip(locked, found, strict=True)}
            for number, image in enumerate(page.images, 1):
                key = ImageKey(scope, image.id)
                listed.add(key)
                seen.add(key)
                self._store.succeeded(key, image, tasks.get(image.id))
                if number % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let scrapes in between
            for image_id, problem in page.invalid:
                log.warning(
                    "invalid image in listing",
                    project_id=scope.project_id,
                    region_id=scope.region_id,
                    image_id=image_id,
                    problem=problem,
                )
                if image_id is None:
                    nameless += 1
                    continue
                key = ImageKey(scope, image_id)
                listed.add(key)
                seen.add(key)
                self._store.failed(key, FetchError("invalid_response", problem))
        return len(counts) == 1 and len(listed) + nameless == next(iter(counts))
