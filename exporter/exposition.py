"""Assembles a snapshot's pre-rendered chunks into one exposition, once per snapshot and format."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass

from exporter.collector import FAMILIES, family_header
from exporter.poller import Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_HEADERS = {om: tuple(family_header(f, om) for f in FAMILIES) for om in (False, True)}


def render(snapshot: Snapshot, *, openmetrics: bool) -> bytes:
    parts = [snapshot.own_openmetrics if openmetrics else snapshot.own_text]
    for index, header in enumerate(_HEADERS[openmetrics]):
        parts.append(header)
        parts.extend(chunks[index] for chunks in snapshot.images)
    if openmetrics:
        parts.append(b"# EOF\n")
    return b"".join(parts)


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
    data: bytes
    content_type: str
    gzipped: bool


class ExpositionCache:
    """Bodies of the latest snapshot only; rendered off the event loop, once per variant."""

    def __init__(self) -> None:
        self._version = -1
        self._bodies: dict[tuple[bool, bool], Body] = {}
        self._lock = asyncio.Lock()

    async def get(self, snapshot: Snapshot, *, openmetrics: bool, gzipped: bool) -> Body:
        variant = (openmetrics, gzipped)
        async with self._lock:
            if snapshot.version != self._version:
                self._version, self._bodies = snapshot.version, {}
            body = self._bodies.get(variant)
            if body is None:
                body = await asyncio.to_thread(_build, snapshot, openmetrics, gzipped)
                self._bodies[variant] = body
            return body


def _build(snapshot: Snapshot, openmetrics: bool, gzipped: bool) -> Body:
    data = render(snapshot, openmetrics=openmetrics)
    if gzipped:
        data = gzip.compress(data, compresslevel=5, mtime=0)
    content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
    return Body(data, content_type, gzipped)
