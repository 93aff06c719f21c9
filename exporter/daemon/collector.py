"""The daemon's policy for the garbage collector: survivors of a round frozen, thawed by work.

A full collection walks every tracked object, at any moment of a poll: at 50,000 images that is
80 ms (hundreds on a busy machine) during which no scrape is served (`python -m bench.loop_lag`:
20 ms frozen). What
survived a round (image states, keys, exposition blocks) mostly lives on, so it is frozen out of
full collections; frozen objects are still freed by reference counting when dropped. Only a
cycle among them escapes, so the freeze is lifted for one full collection once the process has
allocated as many objects since the last one as it left frozen: what can hide behind the freeze
is bounded by the work done, whatever the time it took.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger("exporter.daemon.collector")


class SurvivorFreeze:
    """Call after each poll round (the scheduler's `after_round`)."""

    def __init__(self) -> None:
        self.budget = 0  # objects to allocate before the next thaw: the first call thaws
        self.thaws = 0
        self._since = allocated()

    def __call__(self) -> None:
        if allocated() - self._since >= self.budget:
            gc.unfreeze()
            freed = gc.collect()
            self._since = allocated()
            self.thaws += 1
            gc.freeze()
            self.budget = gc.get_freeze_count()
            log.debug("full collection", freed=freed, frozen=self.budget)
        else:
            gc.freeze()


def allocated() -> int:
    """Objects allocated so far as the collector counts them: a young collection every
    `threshold` allocations net of deallocations."""
    return int(gc.get_stats()[0]["collections"]) * gc.get_threshold()[0]
