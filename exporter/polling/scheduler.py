"""Runs poll rounds: one job per target, so a slow or failing one never delays the others.

A round starts every `interval`. A target (an explicit image, or a project/region to list) still
running from the previous round is skipped, not doubled. Results go to the image store; the
publisher snapshots it after each round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from exporter.metrics.image_store import ImageStore
from exporter.metrics.snapshot import Publisher
from exporter.metrics.telemetry import Telemetry
from exporter.polling.fetcher import Fetcher, Target
from exporter.vocabulary import ImageKey, Targets

log = structlog.get_logger("exporter.polling.scheduler")


def _polled(targets: Targets) -> tuple[Target, ...]:
    """Every target a round fetches, in order: explicit images, configured then found scopes."""
    return (*targets.images, *targets.scopes, *targets.discovered)


@dataclass(frozen=True, slots=True)
class RoundResult:
    number: int
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    duration: float = 0.0


class Scheduler:
    def __init__(
        self,
        fetcher: Fetcher,
        targets: Targets,
        *,
        store: ImageStore,
        publisher: Publisher,
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
        self._publisher = publisher
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

    async def run(self) -> None:
        """Start a round every interval, and publish progress between rounds, until cancelled."""
        await self._publisher.publish()  # explicit images are down until their first fetch
        publishing = asyncio.create_task(self._publisher.run())
        try:
            started = time.monotonic()
            while True:
                self.start_round()
                started += self._interval
                await asyncio.sleep(max(0.0, started - time.monotonic()))
        finally:
            pending: list[asyncio.Future[Any]] = [publishing, *self._rounds]
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
        scopes: list[Target] = []
        images: list[Target] = []
        skipped = 0
        for target in _polled(self._targets):
            if target in self._claimed:
                skipped += 1
                continue
            self._claimed.add(target)  # a round starting meanwhile skips it
            (images if isinstance(target, ImageKey) else scopes).append(target)
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
            duration=time.monotonic() - started,
        )
        self._fetcher.round_done()
        telemetry = self._telemetry
        telemetry.polls.inc()
        telemetry.poll_duration.set(result.duration)
        telemetry.last_poll.set(self._now())
        self.rounds_completed += 1
        await self._publisher.publish(ready=True)
        self._after_round()
        log.info(
            "poll done",
            round=number,
            ok=result.ok,
            failed=result.failed,
            skipped=result.skipped,
            images=len(self._store),
            images_failing=self._store.failing(),
            duration=round(result.duration, 3),
        )
        # What a soak watches for leaks: tasks must not pile up round after round.
        log.debug("event loop", tasks=len(asyncio.all_tasks()))
        async with self._round_done:
            self._round_done.notify_all()
        return result
