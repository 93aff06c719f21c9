"""Gcore's endpoints as typed calls: image, image listing, task, projects, regions, tasks listing.

Requests, retries and the key are `transport`'s; this module builds paths and validates answers.
A listing ends when its pages run out, whatever `count` claims: a `count` that lies can neither
keep a deleted image nor make the exporter ask for pages without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

from pydantic import ValidationError

from exporter.gcore.cluster_models import GpuCluster
from exporter.gcore.models import Image, Listing, Project, Region, Task, clean_text
from exporter.gcore.transport import RateGate, Transport, shown
from exporter.vocabulary import YIELD_EVERY, Endpoint, FetchError, ImageKey, Scope

__all__ = ["GcoreClient", "Page"]

PAGE_SIZE: Final = 1000
PAGE_MARGIN: Final = 2  # pages a listing may take beyond what its first `count` allows
_MAX_ITEMS: Final = 10_000_000  # a bound on pagination, whatever `count` claims
Item = TypeVar("Item", Project, Region, Task, GpuCluster)

Ending = Literal["ran_out", "stuck", "bounded"]
"""Why a listing stopped: its pages ran out (it is whole), a page brought no new id (the server
ignores `offset`), or it took every page its `count` allows plus a margin."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a scope's image list, validated item by item: one bad image sinks no page."""

    count: int  # how many images the server says the whole list holds, as of this page
    images: tuple[Image, ...]
    invalid: tuple[tuple[str | None, str], ...]  # (id when there is one, what is wrong)
    ending: Ending | None = None  # set on the last page only


InvalidItem = Callable[[Endpoint, str | None, str], None]
"""Told of each item of a listing that failed validation: endpoint, its id if any, the problem."""


def _ignore(endpoint: Endpoint, item_id: str | None, problem: str) -> None:
    """No one is told: for clients that count nothing (tests, one-off tools)."""


class GcoreClient:
    def __init__(self, transport: Transport, *, on_invalid: InvalidItem = _ignore) -> None:
        self._transport = transport
        self._on_invalid = on_invalid

    def __repr__(self) -> str:
        return f"GcoreClient({self._transport!r})"

    @property
    def gate(self) -> RateGate:
        return self._transport.gate

    async def get_image(self, key: ImageKey) -> Image:
        scope = key.scope
        url = self._transport.url(*_images(scope), key.image_id)
        data = await self._transport.get_json("image", url)
        try:
            image = Image.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"image: {_summary(exc)}") from None
        if image.id.lower() != key.image_id.lower():  # UUIDs: case does not matter
            raise FetchError(
                "invalid_response", f"asked for image {key.image_id}, got {shown(image.id)}"
            )
        return image

    async def list_pages(self, scope: Scope) -> AsyncIterator[Page]:
        """Page through a scope's images by offset until the pages run out, whatever `count` says.

        Pages are yielded as they arrive so that a caller can render and drop them: holding a
        50,000-image listing at once costs memory and long garbage-collector pauses. The last
        page carries the listing's `ending`.
        """
        url = self._transport.url(*_images(scope))
        pager = _Pager()
        while True:
            params = {"limit": PAGE_SIZE, "offset": pager.offset}
            data = await self._transport.get_json("images", url, params)
            try:
                page = Listing.model_validate(data)
            except ValidationError as exc:
                raise FetchError("invalid_response", f"image list: {_summary(exc)}") from None
            images: list[Image] = []
            invalid: list[tuple[str | None, str]] = []
            ids: list[str] = []
            for number, raw in enumerate(page.results, 1):
                if number % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # validating a big page must not starve scrapes
                try:
                    image = Image.model_validate(raw)
                except ValidationError as exc:
                    item_id = _raw_id(raw)
                    invalid.append((item_id, _summary(exc)))
                    self._on_invalid("images", item_id, _summary(exc))
                    if item_id is not None:
                        ids.append(item_id)
                else:
                    images.append(image)
                    ids.append(image.id)
            ending = pager.turn(page.count, len(page.results), ids)
            yield Page(page.count, tuple(images), tuple(invalid), ending)
            if ending is not None:
                return

    async def get_task(self, task_id: str) -> Task:
        url = self._transport.url("cloud", "v1", "tasks", task_id)
        data = await self._transport.get_json("task", url)
        try:
            return Task.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"task: {_summary(exc)}") from None

    async def list_projects(self) -> tuple[Project, ...]:
        return await _list_all(
            self._transport,
            self._on_invalid,
            "projects",
            ("cloud", "v1", "projects"),
            (),
            Project.model_validate,
            whole=True,
        )

    async def list_regions(self) -> tuple[Region, ...]:
        regions = ("cloud", "v1", "regions")
        return await _list_all(
            self._transport,
            self._on_invalid,
            "regions",
            regions,
            (),
            Region.model_validate,
            whole=True,
        )

    async def list_tasks(
        self,
        *,
        since: datetime,
        project_ids: Iterable[int],
        region_ids: Iterable[int],
        state: str | None = None,
    ) -> tuple[Task, ...]:
        """Tasks created since `since` (in `state`, if given), in any of the projects and any of
        the regions. A malformed task is skipped and reported, never the whole listing."""
        params: list[tuple[str, str | int]] = [
            ("from_timestamp", since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        ]
        if state is not None:
            params.append(("state", state))
        params += [("project_id", p) for p in sorted(set(project_ids))]
        params += [("region_id", r) for r in sorted(set(region_ids))]
        return await _list_all(
            self._transport,
            self._on_invalid,
            "tasks",
            ("cloud", "v1", "tasks"),
            params,
            Task.model_validate,
        )

    async def list_clusters(self, scope: Scope) -> tuple[GpuCluster, ...]:
        """Every GPU cluster of a scope, validated one by one (see `cluster_models`).

        Bare metal is asked for `managed_by=user&managed_by=k8s`: its default is `user` only,
        which would leave out the clusters Gcore's managed Kubernetes runs, and their images
        would look unused. A listing cut short fails: a partial one would undercount.
        """
        path = ("cloud", "v3", "gpu", scope.kind, str(scope.project_id), str(scope.region_id))
        managed = [("managed_by", "user"), ("managed_by", "k8s")]
        params = managed if scope.kind == "baremetal" else []
        parse = GpuCluster.virtual if scope.kind == "virtual" else GpuCluster.model_validate
        return await _list_all(
            self._transport, self._on_invalid, "clusters", (*path, "clusters"), params, parse
        )


async def _list_all(
    transport: Transport,
    on_invalid: InvalidItem,
    endpoint: Endpoint,
    path: tuple[str, ...],
    params: Sequence[tuple[str, str | int]],
    parse: Callable[[Any], Item],
    *,
    whole: bool = False,
) -> tuple[Item, ...]:
    """Every valid item of a `{count, results}` list, each validated on its own: a malformed
    item is reported and skipped (it cannot be used anyway), the rest are kept. A listing cut
    short fails, and so does one with a malformed item when it must be `whole` (projects and
    regions: discovery would drop the scopes of what it could not read)."""
    url = transport.url(*path)
    items: list[Item] = []
    pager = _Pager()
    while True:
        paging: list[tuple[str, str | int]] = [("limit", PAGE_SIZE), ("offset", pager.offset)]
        data = await transport.get_json(endpoint, url, [*params, *paging])
        try:
            page = Listing.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"{endpoint}: {_summary(exc)}") from None
        ids: list[str] = []
        problem = None  # the first invalid item's
        for number, raw in enumerate(page.results, 1):
            if number % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                item = parse(raw)
            except ValidationError as exc:
                item_id = _raw_id(raw)
                problem = problem or _summary(exc)
                on_invalid(endpoint, item_id, _summary(exc))
                ids += [item_id] if item_id is not None else []
            else:
                items.append(item)
                ids.append(str(item.id))
        if whole and problem is not None:
            raise FetchError("invalid_response", f"{endpoint}: {problem}")
        ending = pager.turn(page.count, len(page.results), ids)
        if ending == "ran_out":
            return tuple(items)
        if ending is not None:
            raise FetchError("invalid_response", f"{endpoint}: listing did not end ({ending})")


class _Pager:
    """Offset paging that ends when the pages run out, whatever `count` says."""

    def __init__(self) -> None:
        self.offset = 0
        self._pages = 0
        self._limit: int | None = None
        self._ids: set[str] = set()

    def turn(self, count: int, length: int, ids: Sequence[str]) -> Ending | None:
        """Take in a page of `length` items; whether the listing ends after it, and why."""
        new = len(set(ids) - self._ids)
        self._ids.update(ids)
        self.offset += length
        self._pages += 1
        if self._limit is None and length:
            self._limit = -(-max(count, 0) // length) + PAGE_MARGIN
        if not length:
            return "ran_out"
        if new == 0:
            return "stuck"
        # A page short of the limit that ends where `count` says is the end. Otherwise (a full
        # page, or `count` disagrees with the pages) only an empty page proves nothing follows.
        if self.offset == count and length != PAGE_SIZE:
            return "ran_out"
        if (self._limit is not None and self._pages >= self._limit) or self.offset >= _MAX_ITEMS:
            return "bounded"
        return None


def _images(scope: Scope) -> tuple[str, ...]:
    return ("cloud", "v3", "gpu", scope.kind, str(scope.project_id), str(scope.region_id), "images")


def _raw_id(raw: object) -> str | None:
    """The id of an item that failed validation, when it has a usable one."""
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return None
    return clean_text(str(raw_id))


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{location}: {first['msg']}{more}"
