"""Runs poll rounds: one job per target, so a slow or failing one never delays the others.

A round starts every `interval`. A target (an explicit image, or a project/region to list) still
running from the previous round is skipped, not doubled. Results go to the image store; each
round ends with `publish_round` (the poller's publishing path), before it counts as done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog

from exporter.metrics.image_store import ImageStore
from exporter.metrics.telemetry import Telemetry
from exporter.polling.fetcher import Fetcher, Target
from exporter.polling.scope_cadence import ScopeCadence
from exporter.vocabulary import ImageKey, Scope, Targets

log = structlog.get_logger(__name__)


def _polled(targets: Targets) -> tuple[Target, ...]:
    """Every target a round fetches, in order: explicit images, configured then found scopes."""
    return (*targets.images, *targets.scopes, *targets.discovered)


@dataclass(frozen=True, slots=True)
class RoundResult:
    number: int
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    resting: int = 0  # scopes whose cadence did not call for a listing this round
    duration: float = 0.0


class Scheduler:
    def __init__(
        self,
        fetcher: Fetcher,
        targets: Targets,
        *,
        store: ImageStore,
        publish_round: Callable[[], Awaitable[object]],
        telemetry: Telemetry,
        interval: float,
        workers: int = 8,
        wall_clock: Callable[[], float] = time.time,
        after_round: Callable[[], None] = lambda: None,
    ) -> None:
        """`after_round` runs once a round is published: the process's memory policy, say."""
        self._fetcher = fetcher
        self._targets = targets
        self._wanted = frozenset(_polled(targets))
        self._store = store  # read for the round's log line
        self._publish_round = publish_round
        self._telemetry = telemetry
        self._interval = interval
        self._now = wall_clock
        self._after_round = after_round
        self._workers = workers
        self._claimed: set[Target] = set()  # held by a round, from its start until fetched
        self._rounds: set[asyncio.Task[RoundResult]] = set()
        self._round_done = asyncio.Condition()
        self.rounds_completed = 0

    @property
    def targets(self) -> Targets:
        return self._targets

    @property
    def cadence(self) -> ScopeCadence:
        return self._fetcher.cadence

    async def run(self) -> None:
        """Start a round every interval, until cancelled."""
        try:
            started = time.monotonic()
            while True:
                self.start_round()
                started += self._interval
                await asyncio.sleep(max(0.0, started - time.monotonic()))
        finally:
            pending: list[asyncio.Future[Any]] = [*self._rounds]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._fetcher.close()

    def start_round(self) -> asyncio.Task[RoundResult]:
        number = self.rounds_completed + len(self._rounds) + 1
        round_task = asyncio.create_task(self._round(number))
        self._rounds.add(round_task)
        round_task.add_done_callback(self._rounds.discard)
        return round_task

    async def run_once(self) -> RoundResult:
        return await self.start_round()

    async def wait_for_rounds(self, count: int) -> None:
        """Return once `count` rounds have completed in total: tests wait on this, not on time."""
        async with self._round_done:
            await self._round_done.wait_for(lambda: self.rounds_completed >= count)

    def set_targets(self, targets: Targets) -> None:
        """Poll `targets` from the next round on. What left them leaves the store now, or when
        its fetch in flight ends (so that a late listing cannot bring its images back)."""
        wanted = frozenset(_polled(targets))
        gone = self._wanted - wanted
        self._targets, self._wanted = targets, wanted
        self._fetcher.register(targets)
        self.cadence.retain({*targets.scopes, *targets.discovered})
        for target in gone:
            if target not in self._claimed:
                self._fetcher.forget(target, targets)

    def _release(self, target: Target) -> None:
        self._claimed.discard(target)
        if target not in self._wanted:
            self._fetcher.forget(target, self._targets)

    async def _round(self, number: int) -> RoundResult:
        """Fetch every target not still held by an earlier round.

        Each scope gets a task of its own (a listing never holds explicit images up), and
        `workers` more take explicit images one by one: a round's tasks and memory grow with the
        concurrency, not with the number of ids.
        """
        started = time.monotonic()
        scopes, images, skipped, resting = _claim(self._targets, self._claimed, self.cadence.due)
        queue = iter(images)
        outcomes = [0, 0]  # failed, ok

        async def fetch(target: Target) -> None:
            try:
                outcomes[await self._fetcher.fetch(target)] += 1
            finally:
                self._release(target)

        async def worker() -> None:
            for target in queue:  # shared: each task takes the next image not yet taken
                await fetch(target)

        workers = min(self._workers, len(images))
        try:
            await asyncio.gather(*map(fetch, scopes), *(worker() for _ in range(workers)))
        finally:
            for target in queue:  # never taken: the round was cancelled
                self._release(target)
        result = RoundResult(
            number,
            ok=outcomes[1],
            failed=outcomes[0],
            skipped=skipped,
            resting=resting,
            duration=time.monotonic() - started,
        )
        self._fetcher.round_done()
        telemetry = self._telemetry
        telemetry.polls.inc()
        telemetry.poll_duration.set(result.duration)
        telemetry.last_poll.set(self._now())
        self.rounds_completed += 1
        await self._publish_round()
        self._after_round()
        _log_round(result, self._store)
        async with self._round_done:
            self._round_done.notify_all()
        return result


class _Claimed(NamedTuple):
    """What a round takes of its targets, and how many it leaves to others or to rest."""

    scopes: list[Target]  # to list
    images: list[Target]  # to fetch by id
    skipped: int  # still held by an earlier round
    resting: int  # scopes whose cadence calls for no listing now


def _claim(targets: Targets, claimed: set[Target], due: Callable[[Scope], bool]) -> _Claimed:
    """Claim each target not in `claimed` (a round starting meanwhile skips it), scopes only
    when `due`."""
    scopes: list[Target] = []
    images: list[Target] = []
    skipped = resting = 0
    for target in _polled(targets):
        if target in claimed:
            skipped += 1
            continue
        if not isinstance(target, ImageKey) and not due(target):
            resting += 1
            continue
        claimed.add(target)
        (images if isinstance(target, ImageKey) else scopes).append(target)
    return _Claimed(scopes, images, skipped, resting)


def _log_round(result: RoundResult, store: ImageStore) -> None:
    log.info(
        "poll done",
        round=result.number,
        ok=result.ok,
        failed=result.failed,
        skipped=result.skipped,
        resting=result.resting,
        images=len(store),
        images_failing=store.failing(),
        duration=round(result.duration, 3),
    )
    # What a soak watches for leaks: tasks must not pile up round after round.
    log.debug("event loop", tasks=len(asyncio.all_tasks()))
