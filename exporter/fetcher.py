"""What one target costs: a GET for an explicit image, every page of a listing for a scope.

Results land in the image store; the task behind each lock comes from the task cache. The
scheduler decides when; this module decides what a fetch means for the images it touches, and
which images are this shard's: every shard pages through the listings, but only its own images
get a GET, a task lookup and series.
"""

from __future__ import annotations

import asyncio

import structlog

from exporter.client import GcoreClient
from exporter.image_store import ImageStore
from exporter.sharding import EVERYTHING, Shard
from exporter.task_cache import TaskCache
from exporter.telemetry import Telemetry
from exporter.vocabulary import FetchError, ImageKey, Scope, Targets

log = structlog.get_logger("exporter.fetcher")
RENDER_EVERY = 50  # images rendered between two yields: about 3 ms at ~65 us an image

Target = ImageKey | Scope


class Fetcher:
    def __init__(
        self,
        client: GcoreClient,
        *,
        store: ImageStore,
        tasks: TaskCache,
        telemetry: Telemetry,
        shard: Shard = EVERYTHING,
    ) -> None:
        self._client = client
        self._store = store
        self._tasks = tasks
        self._telemetry = telemetry
        self._shard = shard

    def register(self, targets: Targets) -> Targets:
        """The targets this shard polls: its own explicit images (down until fetched) and every
        scope (undiscovered until its first listing)."""
        own = tuple(key for key in targets.images if self._shard.owns(key.image_id))
        for key in own:
            self._store.add(key, explicit=True)
        for scope in targets.scopes:
            self._telemetry.discovery_up.labels(str(scope.project_id), str(scope.region_id)).set(0)
        return Targets(own, targets.scopes)

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
            fetched = False
        else:
            self._store.succeeded(key, image, await self._tasks.lock_of(image))
            fetched = True
        await self._store.settle(ripe_only=True)  # a block all fetched: no chunk piles up
        return fetched

    async def _discover(self, scope: Scope) -> bool:
        labels = (str(scope.project_id), str(scope.region_id))
        seen: set[str] = set()  # ids of this shard's images the listing held
        try:
            complete = await self._absorb_listing(scope, seen)
            if not complete:  # the list changed under our pages: once more
                complete = await self._absorb_listing(scope, seen)
        except FetchError as exc:
            self._telemetry.discovery_up.labels(*labels).set(0)
            log.warning(
                "listing failed", project_id=labels[0], region_id=labels[1], **exc.log_fields()
            )
            for number, key in enumerate(self._store.in_scope(scope), 1):
                if key.image_id not in seen:  # images of pages that did come are fresh
                    self._store.failed(key, exc)
                if number % RENDER_EVERY == 0:
                    await asyncio.sleep(0)
            return False
        self._telemetry.discovery_up.labels(*labels).set(1)
        if complete:  # only a complete listing proves that an image is gone
            self._store.retain(scope, seen)
        return True

    async def _absorb_listing(self, scope: Scope, seen: set[str]) -> bool:
        """Take in every page of a scope's list (this shard's images of it into the store, into
        `seen`); True if the list held still while being paged."""
        counts: set[int] = set()
        listed: set[str] = set()  # every image id, this shard's or not: the list's own size
        nameless = 0
        owns = self._shard.owns
        async for page in self._client.list_pages(scope):
            counts.add(page.count)
            listed.update(image.id for image in page.images)
            own = [image for image in page.images if owns(image.id)]
            locked = [image for image in own if image.task_id is not None]
            found = await asyncio.gather(*(self._tasks.lock_of(image) for image in locked))
            tasks = {image.id: task for image, task in zip(locked, found, strict=True)}
            for number, image in enumerate(own, 1):
                seen.add(image.id)
                self._store.succeeded(ImageKey(scope, image.id), image, tasks.get(image.id))
                if number % RENDER_EVERY == 0:
                    await asyncio.sleep(0)  # let scrapes in between
            await self._store.settle()  # a page's chunks into their blocks: none pile up
            for image_id, problem in page.invalid:
                if image_id is None:
                    nameless += 1
                else:
                    listed.add(image_id)
                    if not owns(image_id):
                        continue  # its own shard reports it
                log.warning(
                    "invalid image in listing",
                    project_id=scope.project_id,
                    region_id=scope.region_id,
                    image_id=image_id,
                    problem=problem,
                )
                if image_id is not None:
                    seen.add(image_id)
                    self._store.failed(
                        ImageKey(scope, image_id), FetchError("invalid_response", problem)
                    )
        return len(counts) == 1 and len(listed) + nameless == next(iter(counts))
