"""Assembles a snapshot's pre-rendered chunks into an exposition, once per snapshot and format.

A body is kept as parts (a family's lines for a slice of images), not one joined buffer: joining
slice by slice bounds each stretch of event-loop work, and the parts are written as they are.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from exporter.families import FAMILIES
from exporter.snapshot import OPENMETRICS_EOF, Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_HEADERS = {om: tuple(f.header(openmetrics=om) for f in FAMILIES) for om in (False, True)}


_SLICE = 5000  # images per part


def _slices(snapshot: Snapshot, index: int) -> Iterator[bytes]:
    """Family `index`'s lines, a slice of images at a time."""
    images = snapshot.images
    for start in range(0, len(images), _SLICE):
        yield b"".join([chunks[index] for chunks in images[start : start + _SLICE]])


def _assemble(
    snapshot: Snapshot, families: Iterable[tuple[bytes, ...]], openmetrics: bool
) -> list[bytes]:
    parts = [snapshot.own_openmetrics if openmetrics else snapshot.own_text]
    for header, slices in zip(_HEADERS[openmetrics], families, strict=True):
        parts.append(header)
        parts += slices
    if openmetrics:
        parts.append(OPENMETRICS_EOF)
    return parts


def render_parts(snapshot: Snapshot, *, openmetrics: bool) -> list[bytes]:
    """The exposition as consecutive byte strings (for `--once` and tests)."""
    families = [tuple(_slices(snapshot, index)) for index in range(len(FAMILIES))]
    return _assemble(snapshot, families, openmetrics)


def render(snapshot: Snapshot, *, openmetrics: bool) -> bytes:
    return b"".join(render_parts(snapshot, openmetrics=openmetrics))


def _accepts(header: str, token: str) -> bool:
    """Whether an Accept(-Encoding) header lists `token` with a non-zero quality."""
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if name.lower() != token:
            continue
        quality = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            continue
    return False


def wants_openmetrics(accept: str) -> bool:
    return _accepts(accept, "application/openmetrics-text")


def wants_gzip(accept_encoding: str) -> bool:
    return _accepts(accept_encoding, "gzip")


@dataclass(frozen=True, slots=True)
class Body:
    parts: tuple[bytes, ...]
    content_type: str
    gzipped: bool

    @property
    def size(self) -> int:
        return sum(len(part) for part in self.parts)


def _gzip(parts: Iterable[bytes]) -> bytes:
    packer = zlib.compressobj(5, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    return b"".join([*(packer.compress(part) for part in parts), packer.flush()])


class ExpositionCache:
    """Bodies of the latest snapshot only, each variant built once; scrapes share the work."""

    def __init__(self) -> None:
        self._version = -1
        self._families: tuple[tuple[bytes, ...], ...] | None = None
        self._bodies: dict[tuple[bool, bool], Body] = {}
        self._lock = asyncio.Lock()

    async def get(self, snapshot: Snapshot, *, openmetrics: bool, gzipped: bool) -> Body:
        async with self._lock:
            if snapshot.version != self._version:
                self._version, self._families, self._bodies = snapshot.version, None, {}
            body = self._bodies.get((openmetrics, gzipped))
            if body is None:
                if self._families is None:
                    self._families = await _families(snapshot)
                parts = _assemble(snapshot, self._families, openmetrics)
                if gzipped:
                    parts = [await asyncio.to_thread(_gzip, parts)]  # zlib releases the GIL
                content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
                body = Body(tuple(parts), content_type, gzipped)
                self._bodies[(openmetrics, gzipped)] = body
            return body


async def _families(snapshot: Snapshot) -> tuple[tuple[bytes, ...], ...]:
    families = []
    for index in range(len(FAMILIES)):
        slices = []
        for part in _slices(snapshot, index):
            slices.append(part)
            await asyncio.sleep(0)  # a slice at a time: scrapes and polls go on in between
        families.append(tuple(slices))
    return tuple(families)
