"""What one target costs: a GET for an explicit image, every page of a listing for a scope.

Results land in the image store; the task behind each lock comes from the task cache. The
scheduler decides when; this module decides what a fetch means for the images it touches, and
which images are this shard's: every shard pages through the listings, but only its own images
get a GET, a task lookup and series.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Literal

import structlog

from exporter.gcore.client import GcoreClient
from exporter.gcore.models import Image
from exporter.metrics.image_store import ImageStore
from exporter.metrics.scope_health import ScopeHealth
from exporter.polling.scope_cadence import ScopeCadence
from exporter.polling.task_cache import TaskCache
from exporter.sharding import EVERYTHING, Shard
from exporter.vocabulary import FetchError, ImageKey, Scope, Targets

log = structlog.get_logger(__name__)
RENDER_EVERY: Final = 50  # images rendered between two yields: about 3 ms at ~65 us an image

Target = ImageKey | Scope
ListingOutcome = Literal["complete", "moved", "stuck", "bounded"]
"""How one read of a listing went: whole, `count` moved between its pages (the list changed
under them), or cut short by a server that ignores `offset` or by the page limit."""
NO_TARGETS: Final = Targets((), ())


class Fetcher:
    def __init__(
        self,
        client: GcoreClient,
        *,
        store: ImageStore,
        tasks: TaskCache,
        scopes: ScopeHealth,
        cadence: ScopeCadence,
        shard: Shard = EVERYTHING,
    ) -> None:
        self._client = client
        self._store = store
        self._tasks = tasks
        self._scopes, self.cadence = scopes, cadence  # how listings went; when to list again
        self._shard = shard
        self._discovered: frozenset[Scope] = frozenset()

    def register(self, targets: Targets, previous: Targets = NO_TARGETS) -> None:
        """Follow `targets` instead of `previous`: the store keeps only the images they cover,
        explicit images exist (down) and new scopes are undiscovered until their first fetch;
        scopes that stay keep their listing state, and those of `previous` that left lose theirs."""
        self._store.follow(targets)
        watched = {*targets.scopes, *targets.discovered}
        for scope in {*previous.scopes, *previous.discovered} - watched:
            self._scopes.forget(scope)
        for scope in watched:
            self._scopes.watch(scope)
        self._discovered = frozenset(targets.discovered)

    def forget(self, target: Target, targets: Targets) -> None:
        """`target` is no longer polled under `targets`: what only it brought leaves the store."""
        watched = {*targets.scopes, *targets.discovered}
        if isinstance(target, ImageKey):
            if target not in targets.images:
                self._store.release(target, listed=target.scope in watched)
        elif target not in watched:
            self._store.drop_scope(target)
            self._scopes.forget(target)

    async def fetch(self, target: Target) -> bool:
        """Fetch one target into the store; True if it succeeded."""
        try:
            if isinstance(target, ImageKey):
                return await self._fetch_image(target)
            return await self._discover(target)
        except Exception as exc:  # a bug must cost one fetch, never the poll loop
            log.exception("unexpected error while polling", target=repr(target))
            if isinstance(target, ImageKey):
                self._store.failed(target, _unexpected(exc))
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
            log.warning(
                "fetch failed",
                project_id=key.scope.project_id,
                region_id=key.scope.region_id,
                image_id=key.image_id,
                **exc.log_fields(),
            )
            fetched = False
        else:
            self._store.succeeded(key, image, await self._tasks.lock_of(image))
            fetched = True
        await self._store.after_fetch()
        return fetched

    async def _discover(self, scope: Scope) -> bool:
        labels = (str(scope.project_id), str(scope.region_id))
        seen: set[ImageKey] = set()  # this shard's images the listing held
        try:
            outcome = await self._absorb_listing(scope, seen)
            if outcome == "moved":  # the list changed under our pages: once more
                outcome = await self._absorb_listing(scope, seen)
        except Exception as exc:  # a bug too: the scope is down and its images age, not frozen
            # without its traceback, which holds this frame (a cycle) and the listing's pages
            error = exc.with_traceback(None) if isinstance(exc, FetchError) else _unexpected(exc)
            if error is not exc:
                log.exception("unexpected error while listing", target=repr(scope))
            if error.reason == "not_found" and scope in self._discovered:
                return self._unavailable(scope, error)
            self._scopes.mark(scope, "failing")
            self.cadence.listed(scope, "failing")
            log.warning(
                "listing failed",
                project_id=labels[0],
                region_id=labels[1],
                kind=scope.kind,
                **error.log_fields(),
            )
            for key in self._store.in_scope(scope):
                if key not in seen:  # images of pages that did come are fresh
                    self._store.failed(key, error)
            return False
        self._scopes.mark(scope, "ok")
        self.cadence.listed(scope, "empty" if outcome == "complete" and not seen else "images")
        if outcome == "complete":  # only a complete listing proves that an image is gone
            self._store.retain(scope, {key.image_id for key in seen})
        else:
            log.warning(
                "listing incomplete, no image removed",
                project_id=labels[0],
                region_id=labels[1],
                why=outcome,
            )
        return True

    def _unavailable(self, scope: Scope, error: FetchError) -> bool:
        """A discovered scope that answers 404 has no such GPU service: no error, no images."""
        self._store.drop_scope(scope)
        self.cadence.listed(scope, "unavailable")
        if self._scopes.mark(scope, "unavailable"):
            log.info(
                "no GPU image service in this region: counted as unavailable",
                project_id=scope.project_id,
                region_id=scope.region_id,
                kind=scope.kind,
                **error.log_fields(),
            )
        return True

    async def _absorb_listing(self, scope: Scope, seen: set[ImageKey]) -> ListingOutcome:
        """Take in every page of a scope's list; complete if its pages ran out and `count` held
        still, whatever it said: a `count` that lies must not keep a deleted image forever."""
        counts: set[int] = set()
        outcome: ListingOutcome = "complete"
        owns = self._shard.owns  # every shard pages the list; its own images get the rest
        async for page in self._client.list_pages(scope):
            counts.add(page.count)
            if page.ending in ("stuck", "bounded"):
                outcome = page.ending
            own = [image for image in page.images if owns(image.id)]
            await _store_listed(self._store, self._tasks, scope, own, seen)
            await self._store.after_page()
            seen.update(_refuse(self._store, self._shard, scope, page.invalid))
        return "moved" if len(counts) > 1 else outcome


async def _store_listed(
    store: ImageStore, tasks: TaskCache, scope: Scope, images: Sequence[Image], seen: set[ImageKey]
) -> None:
    """Each listed image into the store with the task behind its lock (looked up together),
    letting scrapes in every RENDER_EVERY images; its key into `seen` first, so that a listing
    cut short by an error leaves the images stored before it fresh."""
    locked = [image for image in images if image.task_id is not None]
    found = await asyncio.gather(*(tasks.lock_of(image) for image in locked))
    lock_of = {image.id: task for image, task in zip(locked, found, strict=True)}
    for number, image in enumerate(images, 1):
        key = ImageKey(scope, image.id)
        seen.add(key)
        store.succeeded(key, image, lock_of.get(image.id))
        if number % RENDER_EVERY == 0:
            await asyncio.sleep(0)  # let scrapes in between


def _refuse(
    store: ImageStore, shard: Shard, scope: Scope, invalid: Iterable[tuple[str | None, str]]
) -> Iterator[ImageKey]:
    """Log this shard's invalid images of a listing's page and count each as a failed fetch;
    the keys of those with an id."""
    for image_id, problem in invalid:
        if image_id is not None and not shard.owns(image_id):
            continue  # its own shard reports it
        log.warning(
            "invalid image in listing",
            project_id=scope.project_id,
            region_id=scope.region_id,
            image_id=image_id,
            problem=problem,
        )
        if image_id is not None:
            key = ImageKey(scope, image_id)
            store.failed(key, FetchError("invalid_response", problem))
            yield key


def _unexpected(exc: Exception) -> FetchError:
    """What a bug costs the targets it touched: one failed fetch."""
    return FetchError("invalid_response", f"unexpected {type(exc).__name__}")
