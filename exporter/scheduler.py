"""Runs poll rounds: one job per target, so a slow or failing one never delays the others.

A round starts every `interval`. A target (an explicit image, or a project/region to list) still
running from the previous round is skipped, not doubled. Results go to the image store; the
publisher snapshots it after each round.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from exporter.fetcher import Fetcher, Target
from exporter.image_store import ImageStore
from exporter.snapshot import Publisher
from exporter.telemetry import Telemetry
from exporter.vocabulary import Targets

log = structlog.get_logger("exporter.scheduler")


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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetcher = fetcher
        self._targets = targets
        self._wanted = frozenset(_polled(targets))
        self._store = store  # read for the round's log line
        self._publisher = publisher
        self._telemetry = telemetry
        self._interval = interval
        self._now = wall_clock
        self._inflight: dict[Target, asyncio.Task[bool]] = {}
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
            pending: list[asyncio.Future[Any]] = [publishing, *self._inflight.values()]
            pending += self._rounds
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._fetcher.close()

    def start_round(self) -> asyncio.Task[RoundResult]:
        number = self.rounds_completed + len(self._rounds) + 1
        jobs: list[asyncio.Task[bool]] = []
        skipped = 0
        for target in _polled(self._targets):
            if target in self._inflight:
                skipped += 1
                continue
            job = asyncio.create_task(self._fetcher.fetch(target))
            self._inflight[target] = job
            job.add_done_callback(functools.partial(self._forget, target))
            jobs.append(job)
        round_task = asyncio.create_task(self._finish_round(number, jobs, skipped))
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
            if target not in self._inflight:
                self._fetcher.forget(target, targets)

    def _freeze_survivors(self) -> None:
        """Hide what outlived the round (image states and keys, mostly) from the collector.

        A full collection walks every tracked object: tens of ms at 10,000s of images, at any
        moment of a poll. Frozen objects are still freed when no longer referenced; a cycle frozen
        by mistake is collected at the hourly thaw.
        """
        if self.rounds_completed % max(1, round(3600 / self._interval)) == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    def _forget(self, target: Target, _: object) -> None:
        self._inflight.pop(target, None)
        if target not in self._wanted:
            self._fetcher.forget(target, self._targets)

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
        self._fetcher.round_done()
        telemetry = self._telemetry
        telemetry.polls.inc()
        telemetry.poll_duration.set(result.duration)
        telemetry.last_poll.set(self._now())
        self.rounds_completed += 1
        await self._publisher.publish(ready=True)
        self._freeze_survivors()
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
