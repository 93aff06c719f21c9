"""A small, real aiohttp server that speaks the part of the Gcore Cloud API the exporter uses.

It backs `--demo` and every test above the client's unit tests, so it behaves like Gcore where it
matters: `APIKey` auth (scheme case-insensitive), `{"count", "results"}` pages capped at `max_page`
(10 items when no `limit` is given), Gcore's JSON error bodies, and injectable faults (status
codes, HTML bodies, `Retry-After`, delays, answers held until the test releases them). It serves
virtual and bare-metal GPU images and clusters (`fake_clusters`), projects, regions, and the Tasks
list with its filters; a (kind, region) pair in `unserved` answers 404, like a region without that
GPU service.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from exporter.demo.fake_clusters import CLUSTERS_PATH, ClusterBook

IMAGES_PATH = "/cloud/v3/gpu/{kind:virtual|baremetal}/{project_id}/{region_id}/images"
IMAGE_PATH = IMAGES_PATH + "/{image_id}"
TASK_PATH = "/cloud/v1/tasks/{task_id}"
TASKS_PATH = "/cloud/v1/tasks"
PROJECTS_PATH = "/cloud/v1/projects"
REGIONS_PATH = "/cloud/v1/regions"

ERROR_CLASSES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    429: "TooManyRequestsError",
}


def make_image(image_id: str, name: str, status: str = "active", **fields: Any) -> dict[str, Any]:
    """A GPU image as the current API returns it; `fields` override or add keys (None allowed)."""
    image: dict[str, Any] = {
        "id": image_id,
        "name": name,
        "status": status,
        "size": 3_221_225_472,
        "min_disk": 20,
        "min_ram": 2048,
        "task_id": None,
        "created_at": "2026-01-05T14:51:26.570866",
        "updated_at": "2026-01-06T09:00:00Z",
        "tags": [],
        "visibility": "private",
        "ssh_key": "allow",
        "architecture": "x86_64",
        "os_distro": "ubuntu",
        "os_type": "linux",
        "os_version": "22.04",
        "disk_format": "qcow2",
        "hw_firmware_type": "uefi",
        "gpu_driver": "nvidia",
        "gpu_driver_type": "open",
        "gpu_driver_version": "570.148.08",
        "cuda_toolkit_version": "12.8",
        "region": "Luxembourg-2",
        "region_id": 0,
        "project_id": 0,
    }
    image.update(fields)
    return image


def make_task(
    task_id: str, state: str = "RUNNING", task_type: str = "upload_virtual_image", **fields: Any
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": task_id,
        "state": state,
        "task_type": task_type,
        "user_id": 1,
        "created_on": "2026-01-06T08:42:42",
        "updated_on": None,
        "finished_on": None,
        "error": None,
        "created_resources": None,
        "request_id": str(uuid.uuid4()),
    }
    task.update(fields)
    return task


def make_project(
    project_id: int, name: str, state: str | None = "ACTIVE", **fields: Any
) -> dict[str, Any]:
    project: dict[str, Any] = {
        "id": project_id,
        "name": name,
        "state": state,
        "is_default": project_id == 1,
        "client_id": 1,
        "created_at": "2025-01-01T00:00:00",
        "description": None,
        "task_id": None,
    }
    project.update(fields)
    return project


def make_region(
    region_id: int,
    name: str,
    *,
    state: str = "ACTIVE",
    gpu: bool = True,
    baremetal: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": region_id,
        "display_name": name,
        "slug": name.lower().replace(" ", "-"),
        "state": state,
        "has_ai": gpu,
        "has_ai_gpu": gpu,
        "has_baremetal": baremetal,
        "has_basic_vm": True,
        "has_k8s": True,
        "has_kvm": True,
        "zone": "EMEA",
    }
    region.update(fields)
    return region


@dataclass
class Fault:
    """An injected answer for requests whose path matches `pattern` (a regular expression)."""

    pattern: str
    status: int
    body: str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    times: int | None = 1
    delay: float = 0.0
    hold: asyncio.Event | None = None  # the answer waits until the test sets it
    content_type: str = "application/json"


@dataclass
class FakeGcore:
    """In-memory Gcore state. Mutate it freely between requests; the server reads it live."""

    api_key: str = "test-key"
    max_page: int = 1000
    images: dict[tuple[int, int], dict[str, dict[str, Any]]] = field(default_factory=dict)
    baremetal_images: dict[tuple[int, int], dict[str, dict[str, Any]]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    unserved: set[tuple[str, int]] = field(default_factory=set)  # (kind, region_id): 404
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)  # time.monotonic(), one per request
    latency: float = 0.0  # added to every answer
    claimed_count: Callable[[int], int] | None = None  # a lying `count`, from the true one
    in_flight: int = 0
    peak_in_flight: int = 0
    clusters: ClusterBook = field(default_factory=ClusterBook)  # GPU clusters, both kinds

    def put_image(
        self, project_id: int, region_id: int, image: dict[str, Any], kind: str = "virtual"
    ) -> None:
        self._images(kind).setdefault((project_id, region_id), {})[image["id"]] = image

    def update_image(
        self, project_id: int, region_id: int, image_id: str, kind: str = "virtual", **fields: Any
    ) -> None:
        self._images(kind)[(project_id, region_id)][image_id].update(fields)

    def remove_image(
        self, project_id: int, region_id: int, image_id: str, kind: str = "virtual"
    ) -> None:
        del self._images(kind)[(project_id, region_id)][image_id]

    def _images(self, kind: str) -> dict[tuple[int, int], dict[str, dict[str, Any]]]:
        return self.baremetal_images if kind == "baremetal" else self.images

    def put_task(self, task: dict[str, Any]) -> None:
        self.tasks[task["id"]] = task

    def inject(self, pattern: str, status: int, **kwargs: Any) -> Fault:
        fault = Fault(pattern, status, **kwargs)
        self.faults.append(fault)
        return fault

    def count(self, pattern: str) -> int:
        """How many requests so far had a path (with query) matching `pattern`."""
        return sum(1 for path in self.requests if re.search(pattern, path))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(IMAGES_PATH, self._list_images)
        app.router.add_get(IMAGE_PATH, self._get_image)
        app.router.add_get(TASK_PATH, self._get_task)
        app.router.add_get(TASKS_PATH, self._list_tasks)
        app.router.add_get(PROJECTS_PATH, self._list_projects)
        app.router.add_get(REGIONS_PATH, self._list_regions)
        app.router.add_get(CLUSTERS_PATH, self.clusters.handler(self))
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return await self._answer(request, handler)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        self.request_times.append(time.monotonic())
        fault = _take_fault(self.faults, request.path_qs)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.hold is not None:
                await fault.hold.wait()
            return _fault_response(fault)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "apikey" or key != self.api_key:
            return error(401, "Invalid API key")
        response: web.StreamResponse = await handler(request)
        return response

    def _scope(self, request: web.Request) -> dict[str, dict[str, Any]] | None:
        kind = request.match_info["kind"]
        try:
            key = (int(request.match_info["project_id"]), int(request.match_info["region_id"]))
        except ValueError:
            return None
        if (kind, key[1]) in self.unserved:
            return None
        return self._images(kind).get(key, {})

    async def _list_images(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        if scope is None:
            return error(404, "Project or region not found")
        return self._page(request, list(scope.values()), self.claimed_count)

    def _page(
        self,
        request: web.Request,
        items: Sequence[Any],
        claimed: Callable[[int], int] | None = None,
    ) -> web.Response:
        try:
            limit = int(request.query.get("limit", "10"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return error(400, "limit and offset must be integers")
        if limit < 1 or offset < 0:
            return error(400, "limit must be positive and offset non-negative")
        page = items[offset : offset + min(limit, self.max_page)]
        count = len(items) if claimed is None else claimed(len(items))
        return web.json_response({"count": count, "results": list(page)})

    async def _list_projects(self, request: web.Request) -> web.Response:
        return self._page(request, self.projects)

    async def _list_regions(self, request: web.Request) -> web.Response:
        return self._page(request, self.regions)

    async def _list_tasks(self, request: web.Request) -> web.Response:
        try:
            items = _tasks_matching(self.tasks.values(), request)
        except ValueError:
            return error(400, "invalid filter")
        return self._page(request, items)

    async def _get_image(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        image = None if scope is None else scope.get(request.match_info["image_id"])
        if image is None:
            return error(404, f"Image {request.match_info['image_id']} not found")
        return web.json_response(image)

    async def _get_task(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return error(404, f"Task {request.match_info['task_id']} not found")
        return web.json_response(task)


def _tasks_matching(tasks: Iterable[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    """The Tasks list's filters as Gcore applies them: `state`, `project_id`, `region_id` (each
    repeatable), `task_type`, and `from_timestamp`/`to_timestamp` on the creation time.
    ValueError: a filter that does not parse."""
    query = request.query
    projects = {int(v) for v in query.getall("project_id", [])}
    regions = {int(v) for v in query.getall("region_id", [])}
    since = _timestamp(query.get("from_timestamp"))
    until = _timestamp(query.get("to_timestamp"))
    states = set(query.getall("state", []))
    wanted: list[Callable[[dict[str, Any]], bool]] = []
    if states:
        wanted.append(lambda t: t.get("state") in states)
    if projects:
        wanted.append(lambda t: t.get("project_id") in projects)
    if regions:
        wanted.append(lambda t: t.get("region_id") in regions)
    if "task_type" in query:
        wanted.append(lambda t: t.get("task_type") == query["task_type"])
    if since is not None or until is not None:
        wanted.append(lambda t: _created_within(t, since, until))
    return [t for t in tasks if all(test(t) for test in wanted)]


def _take_fault(faults: list[Fault], path: str) -> Fault | None:
    """The first fault injected for `path` with uses left, one use taken (and dropped from
    `faults` with its last)."""
    for fault in faults:
        if fault.times != 0 and re.search(fault.pattern, path):
            if fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    faults.remove(fault)
            return fault
    return None


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _created_within(task: dict[str, Any], since: datetime | None, until: datetime | None) -> bool:
    try:
        created = _timestamp(task.get("created_on") or None)
    except (TypeError, ValueError):
        return False
    if created is None:
        return False
    return (since is None or created >= since) and (until is None or created <= until)


def error(status: int, message: str) -> web.Response:
    return web.json_response(
        {
            "exception_class": ERROR_CLASSES.get(status, "InternalServerError"),
            "message": message,
            "request_id": str(uuid.uuid4()),
        },
        status=status,
    )


def _fault_response(fault: Fault) -> web.Response:
    if fault.body is None and fault.content_type == "application/json":
        response = error(fault.status, f"Injected {fault.status}")
        response.headers.update(fault.headers)
        return response
    body = fault.body if isinstance(fault.body, str) else json.dumps(fault.body)
    return web.Response(
        status=fault.status,
        text=body or "",
        content_type=fault.content_type,
        headers=dict(fault.headers),
    )
