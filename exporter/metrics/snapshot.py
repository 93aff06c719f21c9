"""Immutable snapshots of everything a scrape serves, and the publisher that makes them.

A scrape reads `Publisher.current` and nothing else: it never waits on a poll, and it always sees
one consistent state (every image's lines and the exporter's own metrics of the same moment).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

OPENMETRICS_EOF: Final = b"# EOF\n"


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    blocks: tuple[tuple[bytes, ...], ...]  # a block of images' lines per family, like `FAMILIES`
    own_text: bytes
    own_openmetrics: bytes  # without the final `# EOF`: the images' families follow it
    ready: bool
    published: float = 0.0  # time.monotonic() when published
    hidden: frozenset[int] = frozenset()  # indices in `FAMILIES` of families not exported


EMPTY_SNAPSHOT: Final = Snapshot(0, (), b"", b"", ready=False)


class SnapshotSource(Protocol):
    @property
    def current(self) -> Snapshot: ...


class Publisher:
    """Publishes on demand (after each round) and, while anything changes, at most every `gap`."""

    def __init__(
        self,
        blocks: Callable[[], Awaitable[tuple[tuple[bytes, ...], ...]]],
        registry: CollectorRegistry,
        *,
        refresh: Callable[[], None] = lambda: None,
        gap: float = 1.0,
        hidden: frozenset[int] = frozenset(),
    ) -> None:
        self._hidden = hidden
        self._blocks = blocks
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
        blocks = await self._blocks()  # what was staged is folded first, in slices
        self._refresh()
        self._current = Snapshot(
            version=self._current.version + 1,
            blocks=blocks,
            own_text=generate_latest(self._registry),
            own_openmetrics=generate_openmetrics(self._registry).removesuffix(OPENMETRICS_EOF),  # type: ignore[no-untyped-call]
            ready=self._ready,
            published=time.monotonic(),
            hidden=self._hidden,
        )
        return self._current

    async def run(self) -> None:
        """Publish what changed between rounds, until cancelled."""
        while True:
            await self._dirty.wait()
            await self.publish()
            await asyncio.sleep(self._gap)
