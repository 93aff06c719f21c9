"""Schedules fetches and owns the only mutable state; publishes immutable snapshots for scrapes.

A round starts every `interval`. Each target (an explicit image, or a project/region to list) runs
as its own task, so a slow or failing one never delays the others; a target still running from the
previous round is skipped, not doubled. Each fetch re-renders that image's lines; the latest
lines of every image are published as a `Snapshot` after each round and, in between, at most every
second.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import structlog
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.client import FetchError, GcoreClient, Reason
from exporter.collector import NO_VALUES, render_health, render_values
from exporter.config import ImageKey, Scope, Targets
from exporter.models import Image, Task
from exporter.telemetry import Telemetry

log = structlog.get_logger("exporter.poller")
_OM_EOF: Final = b"# EOF\n"
_YIELD_EVERY: Final = 250


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape serves: every image's pre-rendered chunks and the exporter's own metrics."""

    version: int
    images: tuple[tuple[bytes, ...], ...]
    own_text: bytes
    own_openmetrics: bytes
    ready: bool


EMPTY_SNAPSHOT: Final = Snapshot(0, (), b"", b"", ready=False)


@dataclass(slots=True)
class _ImageState:
    """What the poller remembers of one image: its rendered lines, not the API's model of it."""

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


@dataclass(slots=True)
class RoundResult:
    number: int
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    duration: float = 0.0


class Poller:
    def __init__(
        self,
        client: GcoreClient,
        targets: Targets,
        *,
        interval: float,
        stale_after: float,
        telemetry: Telemetry,
        wall_clock: Callable[[], float] = time.time,
        publish_gap: float = 1.0,
    ) -> None:
        self._client = client
        self._targets = targets
        self._interval = interval
        self._stale_after = stale_after
        self._telemetry = telemetry
        self._now = wall_clock
        self._publish_gap = publish_gap
        self._states: dict[ImageKey, _ImageState] = {}
        self._inflight: dict[ImageKey | Scope, asyncio.Task[bool]] = {}
        self._rounds: set[asyncio.Task[RoundResult]] = set()
        self._tasks: dict[str, tuple[float, asyncio.Future[Task | None]]] = {}
        self._dirty = asyncio.Event()
        self._round_done = asyncio.Condition()
        self.rounds_completed = 0
        self.snapshot: Snapshot = EMPTY_SNAPSHOT
        for key in targets.images:
            self._add_state(key, explicit=True)
        for scope in targets.scopes:
            telemetry.discovery_up.labels(str(scope.project_id), str(scope.region_id)).set(0)
        self._publish()

    async def run(self) -> None:
        """Start a round every interval, and publish progress between rounds, until cancelled."""
        publisher = asyncio.create_task(self._publish_loop())
        try:
            started = time.monotonic()
            while True:
                self.start_round()
                started += self._interval
                await asyncio.sleep(max(0.0, started - time.monotonic()))
        finally:
            publisher.cancel()
            pending: list[asyncio.Future[Any]] = [publisher]
            pending += self._inflight.values()
            pending += self._rounds
            pending += [future for _, future in self._tasks.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def start_round(self) -> asyncio.Task[RoundResult]:
        number = self.rounds_completed + len(self._rounds) + 1
        jobs: list[asyncio.Task[bool]] = []
        skipped = 0
        targets: Iterable[ImageKey | Scope] = (*self._targets.images, *self._targets.scopes)
        for target in targets:
            if target in self._inflight:
                skipped += 1
                continue
            job = asyncio.create_task(self._run_target(target))
            self._inflight[target] = job
            job.add_done_callback(functools.partial(self._forget, target))
            jobs.append(job)
        round_task = asyncio.create_task(self._finish_round(number, jobs, skipped))
        self._rounds.add(round_task)
        round_task.add_done_callback(self._rounds.discard)
        return round_task

    def _forget(self, target: ImageKey | Scope, _: object) -> None:
        self._inflight.pop(target, None)

    async def run_once(self) -> RoundResult:
        return await self.start_round()

    async def wait_for_rounds(self, count: int) -> None:
        """Return once `count` rounds have completed in total: tests wait on this, not on time."""
        async with self._round_done:
            await self._round_done.wait_for(lambda: self.rounds_completed >= count)

    async def _run_target(self, target: ImageKey | Scope) -> bool:
        try:
            if isinstance(target, ImageKey):
                return await self._fetch_image(target)
            return await self._discover(target)
        except Exception as exc:  # a bug must cost one fetch, never the poll loop
            log.exception("unexpected error while polling", target=repr(target))
            if isinstance(target, ImageKey):
                problem = FetchError("invalid_response", f"unexpected {type(exc).__name__}")
                self._failed(self._states[target], problem, quiet=True)
            return False

    async def _finish_round(
        self, number: int, jobs: list[asyncio.Task[bool]], skipped: int
    ) -> RoundResult:
        started = time.monotonic()
        outcomes = await asyncio.gather(*jobs) if jobs else []
        result = RoundResult(
            number,
            ok=sum(outcomes),
            failed=len(outcomes) - sum(outcomes),
            skipped=skipped,
            duration=time.monotonic() - started,
        )
        self._expire_tasks()
        telemetry = self._telemetry
        telemetry.polls.inc()
        telemetry.poll_duration.set(result.duration)
        telemetry.last_poll.set(self._now())
        self.rounds_completed += 1
        self._publish()
        log.info(
            "poll done",
            round=number,
            ok=result.ok,
            failed=result.failed,
            skipped=result.skipped,
            images=len(self._states),
            images_failing=sum(1 for state in self._states.values() if not state.up),
            duration=round(result.duration, 3),
        )
        async with self._round_done:
            self._round_done.notify_all()
        return result

    async def _fetch_image(self, key: ImageKey) -> bool:
        state = self._states[key]
        try:
            image = await self._client.get_image(key)
        except FetchError as exc:
            self._failed(state, exc)
            return False
        task = await self._task_for(image)
        self._succeeded(state, image, task)
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
            for state in [s for s in self._states.values() if s.key.scope == scope]:
                if state.key not in seen:  # images of pages that did come are fresh
                    self._failed(state, exc, quiet=True)
            return False
        self._telemetry.discovery_up.labels(*labels).set(1)
        if complete:  # only a complete listing proves that an image is gone
            for key in [k for k in self._states if k.scope == scope and k not in seen]:
                if not self._states[key].explicit:
                    del self._states[key]
                    self._dirty.set()
        return True

    async def _absorb_listing(self, scope: Scope, seen: set[ImageKey]) -> bool:
        """Take in every page of a scope's list; True if it held still while being paged."""
        counts: set[int] = set()
        listed: set[ImageKey] = set()
        nameless = 0
        async for page in self._client.list_pages(scope):
            counts.add(page.count)
            locked = [image for image in page.images if image.task_id is not None]
            found = await asyncio.gather(*(self._task_for(image) for image in locked))
            tasks = {image.id: task for image, task in zip(locked, found, strict=True)}
            for number, image in enumerate(page.images, 1):
                key = ImageKey(scope, image.id)
                listed.add(key)
                seen.add(key)
                self._succeeded(
                    self._states.get(key) or self._add_state(key), image, tasks.get(image.id)
                )
                if number % _YIELD_EVERY == 0:
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
                state = self._states.get(key) or self._add_state(key)
                self._failed(state, FetchError("invalid_response", problem), quiet=True)
        return len(counts) == 1 and len(listed) + nameless == next(iter(counts))

    async def _task_for(self, image: Image) -> Task | None:
        """The task locking `image`, cached per task id for one interval; None if unknown."""
        if image.task_id is None:
            return None
        cached = self._tasks.get(image.task_id)
        if cached is None or time.monotonic() - cached[0] > self._interval:
            future = asyncio.ensure_future(self._lookup_task(image.task_id))
            cached = (time.monotonic(), future)
            self._tasks[image.task_id] = cached
        return await asyncio.shield(cached[1])

    async def _lookup_task(self, task_id: str) -> Task | None:
        try:
            return await self._client.get_task(task_id)
        except FetchError as exc:
            self._telemetry.task_fetch_errors.labels(exc.reason).inc()
            log.info("task lookup failed", task_id=task_id, **exc.log_fields())
            return None

    def _expire_tasks(self) -> None:
        horizon = time.monotonic() - 2 * self._interval
        for task_id in [t for t, (when, _) in self._tasks.items() if when < horizon]:
            del self._tasks[task_id]

    def _add_state(self, key: ImageKey, *, explicit: bool = False) -> _ImageState:
        state = _ImageState(key, explicit)
        self._render_health(state)
        self._states[key] = state
        return state

    def _succeeded(self, state: _ImageState, image: Image, task: Task | None) -> None:
        now = self._now()
        if image.task_id != state.lock_task_id:
            state.lock_task_id = image.task_id
            state.lock_seen = now if image.task_id is not None else None
        if task is not None and task.id != image.task_id:
            task = None  # an answer about another task says nothing about this lock
        lock_started = state.lock_seen
        if task is not None and task.created_on is not None:
            lock_started = task.created_on.timestamp()
        state.values = render_values(
            state.key, image, now=now, task=task, lock_started=lock_started
        )
        state.up, state.last_success, state.last_error = True, now, None
        self._render_health(state)

    def _failed(self, state: _ImageState, error: FetchError, *, quiet: bool = False) -> None:
        now = self._now()
        state.up, state.last_error = False, error.reason
        state.errors[error.reason] = state.errors.get(error.reason, 0) + 1
        stale = state.last_success is None or now - state.last_success > self._stale_after
        if error.reason == "not_found" or stale:
            state.values = NO_VALUES
            state.lock_task_id = state.lock_seen = None
        if not quiet:
            scope = state.key.scope
            log.warning(
                "fetch failed",
                project_id=scope.project_id,
                region_id=scope.region_id,
                image_id=state.key.image_id,
                **error.log_fields(),
            )
        self._render_health(state)

    def _render_health(self, state: _ImageState) -> None:
        health = render_health(
            state.key,
            up=state.up,
            last_success=state.last_success,
            errors=MappingProxyType(state.errors),
            last_error=state.last_error,
        )
        state.rendered = state.values + health
        self._dirty.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._publish()
            await asyncio.sleep(self._publish_gap)

    def _publish(self) -> None:
        self._dirty.clear()
        self._telemetry.images.set(len(self._states))
        self._telemetry.rate_limit_paused.set(int(self._client.gate.remaining > 0))
        registry = self._telemetry.registry
        self.snapshot = Snapshot(
            version=self.snapshot.version + 1,
            images=tuple(state.rendered for state in self._states.values()),
            own_text=generate_latest(registry),
            own_openmetrics=_without_eof(generate_openmetrics(registry)),  # type: ignore[no-untyped-call]
            ready=self.rounds_completed > 0,
        )


def _without_eof(exposition: bytes) -> bytes:
    return exposition.removesuffix(_OM_EOF)
