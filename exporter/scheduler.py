"""Runs poll rounds: each target on its own, so a slow or failing one never delays the others.

A round starts every `interval`. A target (an explicit image, or a project/region to list) still
running from the previous round is skipped, not doubled. Explicit images are taken one by one by
as many tasks as requests may be in flight (`concurrency`): 50,000 ids cost a round no more tasks
than 50. Results go to the image store; the publisher snapshots it after each round.
"""

from __future__ import annotations

import asyncio
import bisect
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
    ) -> None:
        self._fetcher = fetcher
        self._store = store  # read for the round's log line
        self._publisher = publisher
        self._telemetry = telemetry
        self._interval = interval
        self._workers = workers
        self._now = wall_clock
        self._rounds: set[asyncio.Task[RoundResult]] = set()
        self._round_done = asyncio.Condition()
        self.rounds_completed = 0
        own = fetcher.register(targets)
        self._targets: tuple[Target, ...] = (*own.scopes, *own.images)  # scopes first
        self._scopes = len(own.scopes)
        # 1 while a round holds the target (from its start until fetched); by index, since 50,000
        # ids hashed at each round start would hold the loop for tens of ms
        self._claimed = bytearray(len(self._targets))

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

    def _freeze_survivors(self) -> None:
        """Hide what outlived the round (image states and keys, mostly) from the collector.

        A full collection walks every tracked object: tens of ms at 10,000s of images, at any
        moment of a poll. Frozen objects are still freed when no longer referenced; a cycle frozen
        by mistake is collected at the hourly thaw (none shows up in practice).
        """
        if self.rounds_completed % max(1, round(3600 / self._interval)) == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    async def _round(self, number: int) -> RoundResult:
        """Fetch every due target with a bounded pool of tasks taking targets one by one.

        Each scope gets a task of its own (a listing never holds explicit images up), and
        `workers` more take explicit images: a round's tasks and memory grow with the
        concurrency, not with the number of ids.
        """
        started = time.monotonic()
        claimed = self._claimed
        due = [index for index, busy in enumerate(claimed) if not busy]
        for index in due:
            claimed[index] = 1  # a round starting meanwhile skips them
        queue = iter(due)
        outcomes = [0, 0]  # failed, ok

        async def worker() -> None:
            for index in queue:  # shared: each task takes the next target not yet taken
                try:
                    outcomes[await self._fetcher.fetch(self._targets[index])] += 1
                finally:
                    claimed[index] = 0

        scopes = bisect.bisect_left(due, self._scopes)  # due scopes come first
        tasks = scopes + min(self._workers, len(due) - scopes)
        try:
            await asyncio.gather(*(worker() for _ in range(tasks)))
        finally:
            for index in queue:  # never taken: the round was cancelled
                claimed[index] = 0
        skipped = len(claimed) - len(due)
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
        async with self._round_done:
            self._round_done.notify_all()
        return result
