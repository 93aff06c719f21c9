"""The daemon's freeze: what survives a round is hidden from full collections, for a bounded
amount of work (objects allocated), not of time."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from exporter.daemon.collector import SurvivorFreeze, allocated


class Cycle:
    """Garbage only a full collection frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()  # what earlier tests froze
    gc.collect()
    try:
        yield
    finally:
        gc.unfreeze()


def allocate_until(count: int) -> list[list[int]]:
    """Objects kept alive until `allocated()` has grown by `count`: young collections count them."""
    start = allocated()
    kept: list[list[int]] = []
    while allocated() - start < count:
        kept.append([])
    return kept


@pytest.mark.usefixtures("thawed")
def test_a_frozen_cycle_is_collected_once_as_many_objects_were_allocated_as_were_frozen() -> None:
    freeze = SurvivorFreeze()
    freeze()  # the first round: thawed, collected, frozen; the budget is what stayed alive
    assert freeze.thaws == 1 and freeze.budget == gc.get_freeze_count() > 0
    leak = Cycle()
    freed = weakref.ref(leak)
    del leak
    freeze()  # a round whose survivors include the cycle
    gc.collect()
    assert freed() is not None  # frozen: a full collection does not see it
    kept = allocate_until(freeze.budget // 2)
    freeze()
    gc.collect()
    assert freed() is not None and freeze.thaws == 1  # half the budget: still frozen
    kept += allocate_until(freeze.budget)
    freeze()
    assert freed() is None and freeze.thaws == 2
    assert freeze.budget >= len(kept)  # what is alive now sets the next budget
