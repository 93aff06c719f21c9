"""Rendered images, family-major, in blocks of up to 1,000: the only copy of the exposition's bytes.

A scrape writes family after family, each family's lines for every image. Keeping each image's
chunks and, next to them, the families joined for scrapes held every byte twice (three times while
a new snapshot's families were joined). Here a block keeps, for each family, one bytes object with
its images' lines and where each image's lines end; a snapshot is a tuple of blocks' parts, and a
body is those parts, family by family, written as they are.

A re-rendered image is *staged*; its block is *folded* (rebuilt) before the next snapshot, or
after each listing page so that staged chunks never pile up. A fold joins the staged chunks with
the unchanged images' bytes, taken through memoryviews run by run, one family at a time: the
event loop may run a scrape between two families.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Final, cast

from exporter.vocabulary import ImageKey

CAPACITY: Final = 1000  # images per block: parts of ~0.1-1 MB, which scrapes write fastest
Chunks = tuple[bytes | None, ...]  # one per family; None keeps the family's lines as folded


class Block:
    """Up to `CAPACITY` images' lines, one bytes object per family."""

    __slots__ = ("ends", "folded", "members", "parts", "staged")

    def __init__(self, families: int) -> None:
        self.members: list[ImageKey] = []  # in exposition order, as of the next fold
        self.folded: tuple[ImageKey, ...] = ()  # in `parts` order, as of the last fold
        self.parts: tuple[bytes, ...] = (b"",) * families
        self.ends: tuple[array[int], ...] = tuple(array("I") for _ in range(families))
        self.staged: dict[ImageKey, Chunks] = {}

    @property
    def ripe(self) -> bool:
        """Every image re-rendered since the last fold: folding now is a plain join."""
        return len(self.staged) == len(self.members)

    def chunks(self, key: ImageKey) -> tuple[bytes, ...]:
        """What `key` exports as of the next fold, one chunk per family."""
        staged = self.staged.get(key, (None,) * len(self.parts))
        position = self.folded.index(key) if None in staged else -1
        out = []
        for family, chunk in enumerate(staged):
            if chunk is None:
                ends = self.ends[family]
                start = ends[position - 1] if position else 0
                chunk = self.parts[family][start : ends[position]]
            out.append(chunk)
        return tuple(out)

    def folding(self) -> Iterator[None]:
        """Fold, pausing (yielding) after each family; what is staged meanwhile waits its turn.

        Nothing changes until the last family is done: a fold abandoned on the way (its publish
        cancelled by a reload) leaves the block as it was, its staged chunks still staged.
        """
        staged = dict(self.staged)
        members = list(self.members)
        rows = [staged.get(key) for key in members]  # hashes each key once
        parts: list[bytes] = []
        ends: list[array[int]] = []
        if all(row is not None and None not in row for row in rows):  # every line new: join
            full = cast(list[tuple[bytes, ...]], rows)
            for family in range(len(self.parts)):
                column = [row[family] for row in full]
                parts.append(b"".join(column))
                ends.append(array("I", accumulate(map(len, column))))
                yield
        else:
            if members == list(self.folded):
                old = list(range(len(members)))
            else:
                position = {key: index for index, key in enumerate(self.folded)}
                old = [position.get(key, -1) for key in members]  # new images are all staged
            for family in range(len(self.parts)):
                part, family_ends = self._fold_family(family, rows, old)
                parts.append(part)
                ends.append(family_ends)
                yield
        self.parts, self.ends, self.folded = tuple(parts), tuple(ends), tuple(members)
        for key, row in staged.items():  # folded, unless staged again (or removed) meanwhile
            if self.staged.get(key) is row:
                del self.staged[key]

    def _fold_family(
        self, family: int, rows: list[Chunks | None], old: list[int]
    ) -> tuple[bytes, array[int]]:
        """One family's new bytes: staged chunks, and runs of unchanged images' folded bytes."""
        old_ends = self.ends[family]
        view = memoryview(self.parts[family])
        pieces: list[bytes | memoryview] = []
        lengths = array("I")
        run_start = run_end = 0  # the unchanged bytes not yet taken
        for row, index in zip(rows, old, strict=True):
            chunk = None if row is None else row[family]
            if chunk is None:
                start = old_ends[index - 1] if index else 0
                end = old_ends[index]
                lengths.append(end - start)
                if start != run_end:  # not contiguous with the run: take the run, start another
                    if run_end > run_start:
                        pieces.append(view[run_start:run_end])
                    run_start = start
                run_end = end
            else:
                if run_end > run_start:
                    pieces.append(view[run_start:run_end])
                run_start = run_end
                pieces.append(chunk)
                lengths.append(len(chunk))
        if run_end > run_start:
            pieces.append(view[run_start:run_end])
        return b"".join(pieces), array("I", accumulate(lengths))


class Blocks:
    """Every image's lines, in blocks; an image stays in the block it was first placed in."""

    def __init__(self, families: int, capacity: int = CAPACITY) -> None:
        self._families = families
        self._capacity = capacity
        self._blocks: list[Block] = []
        self._dirty: dict[Block, None] = {}  # blocks with staged changes, in order
        self._settling = asyncio.Lock()

    def place(self, key: ImageKey, chunks: tuple[bytes, ...]) -> Block:
        """Append a new image, with every family's chunk, to the last block (or a new one)."""
        if not self._blocks or len(self._blocks[-1].members) >= self._capacity:
            self._blocks.append(Block(self._families))
        block = self._blocks[-1]
        block.members.append(key)
        self.stage(block, key, chunks)
        return block

    def stage(self, block: Block, key: ImageKey, chunks: Chunks) -> None:
        """New lines for `key`; None keeps that family's lines as they are."""
        earlier = block.staged.get(key)
        if earlier is not None:
            chunks = tuple(e if c is None else c for e, c in zip(earlier, chunks, strict=True))
        block.staged[key] = chunks
        self._dirty[block] = None

    def remove(self, gone: Iterable[tuple[Block, ImageKey]]) -> None:
        """Take images out of their blocks (each block filtered once, whatever the count)."""
        by_block: dict[Block, set[ImageKey]] = {}
        for block, key in gone:
            by_block.setdefault(block, set()).add(key)
        for block, keys in by_block.items():
            block.members = [key for key in block.members if key not in keys]
            for key in keys:
                block.staged.pop(key, None)
            self._dirty[block] = None

    async def settle(self, *, ripe_only: bool = False) -> None:
        """Fold the blocks with staged changes, letting the event loop run between families.

        `ripe_only`: only blocks whose every image is staged (a round went through them), and
        not at all while another settle runs: cheap enough to ask after every fetch.
        """
        if ripe_only and self._settling.locked():
            return
        async with self._settling:
            while True:
                block = next((b for b in self._dirty if not ripe_only or b.ripe), None)
                if block is None:
                    break
                del self._dirty[block]
                try:
                    for _ in block.folding():
                        await asyncio.sleep(0)
                except BaseException:
                    self._dirty[block] = None  # not folded: the next settle does it
                    raise
            self._blocks = [block for block in self._blocks if block.members]

    def settle_now(self) -> None:
        """Fold at once (small stores, tests); not while `settle` runs."""
        assert not self._settling.locked()
        for block in self._dirty:
            for _ in block.folding():
                pass
        self._dirty = {}
        self._blocks = [block for block in self._blocks if block.members]

    def view(self) -> tuple[tuple[bytes, ...], ...]:
        """Each block's parts, as of the last fold, indexed like the families."""
        return tuple(block.parts for block in self._blocks)
