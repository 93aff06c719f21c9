"""Immutable snapshots of everything a scrape serves, and the publisher that makes them.

A scrape reads `Publisher.current` and nothing else: it never waits on a poll, and it always sees
one consistent state (every image's lines and the exporter's own metrics of the same moment).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.metrics.families import FAMILIES, AnyFamily

OPENMETRICS_EOF: Final = b"# EOF\n"

FamilyLines = tuple[AnyFamily, tuple[bytes, ...]]
"""A per-image family and its lines: one bytes object per block of images, in exposition order."""


def by_family(
    blocks: Sequence[Sequence[bytes]], families: Sequence[AnyFamily] = FAMILIES
) -> tuple[FamilyLines, ...]:
    """Blocks' parts (each block's lines of `families`, in that order) as each family with its
    lines: where the blocks' order of families meets their names, once."""
    for parts in blocks:
        assert len(parts) == len(families), "a block's parts are one per family"
    return tuple(
        (family, tuple(parts[index] for parts in blocks)) for index, family in enumerate(families)
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    families: tuple[FamilyLines, ...]  # what the images export, family by family
    own_text: bytes
    own_openmetrics: bytes  # without the final `# EOF`: the images' families follow it
    ready: bool
    published: float = 0.0  # time.monotonic() when published


EMPTY_SNAPSHOT: Final = Snapshot(0, by_family(()), b"", b"", ready=False)


class SnapshotSource(Protocol):
    @property
    def current(self) -> Snapshot: ...


class Publisher:
    """Publishes on demand (the poller's `publish`: its one path) and, while anything changes,
    at most every `gap` (`run`)."""

    def __init__(
        self,
        lines: Callable[[], Awaitable[tuple[FamilyLines, ...]]],
        registry: CollectorRegistry,
        *,
        refresh: Callable[[], None] = lambda: None,
        gap: float = 1.0,
    ) -> None:
        self._lines = lines
        self._registry = registry
        self._refresh = refresh  # updates gauges that are read, not counted, before each snapshot
        self._gap = gap
        self._dirty = asyncio.Event()
        self._ready = False
        self._current = EMPTY_SNAPSHOT

    @property
    def current(self) -> Snapshot:
        return self._current

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def publish(self, *, ready: bool = False) -> Snapshot:
        """Publish now; once `ready` has been given, every later snapshot is ready."""
        self._dirty.clear()
        self._ready = self._ready or ready
        families = await self._lines()  # what was staged is folded first, in slices
        self._refresh()
        self._current = Snapshot(
            version=self._current.version + 1,
            families=families,
            own_text=generate_latest(self._registry),
            own_openmetrics=generate_openmetrics(self._registry).removesuffix(OPENMETRICS_EOF),  # type: ignore[no-untyped-call]
            ready=self._ready,
            published=time.monotonic(),
        )
        return self._current

    async def run(self) -> None:
        """Publish what changed between rounds, until cancelled."""
        while True:
            await self._dirty.wait()
            await self.publish()
            await asyncio.sleep(self._gap)
