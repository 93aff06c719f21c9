"""Bodies built from blocks: no copies of the lines, and gzip built only for what changed."""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib

import pytest

from exporter import exposition
from exporter.exposition import ExpositionCache, render
from exporter.families import FAMILIES
from exporter.snapshot import Snapshot

OWN = b"# HELP gcore_exporter_images Images.\n# TYPE gcore_exporter_images gauge\n"


def block(tag: str, images: int = 50) -> tuple[bytes, ...]:
    """A block's parts: one line per image and family, with `tag` in every value."""
    return tuple(
        b"".join(
            f'{family.name}{{image_id="{tag}-{n}"}} {len(tag) + n}\n'.encode()
            for n in range(images)
        )
        for family in FAMILIES
    )


def snapshot(version: int, *blocks: tuple[bytes, ...], published: float = 0.0) -> Snapshot:
    return Snapshot(version, blocks, OWN, OWN, ready=True, published=published)


def single_member(data: bytes) -> bytes:
    """The content of `data`, which must be exactly one gzip member."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    content = inflater.decompress(data)
    assert inflater.eof and inflater.unused_data == b""
    return content


@pytest.mark.parametrize("openmetrics", [False, True])
async def test_gzip_body_is_one_member_holding_the_text_body(openmetrics: bool) -> None:
    current = snapshot(1, block("a"), block("b"), block("c", images=1))
    body = await ExpositionCache().get(current, openmetrics=openmetrics, gzipped=True)
    packed = b"".join(body.parts)
    assert single_member(packed) == render(current, openmetrics=openmetrics)
    assert gzip.decompress(packed) == render(current, openmetrics=openmetrics)
    checker = await asyncio.create_subprocess_exec("gzip", "--test", stdin=asyncio.subprocess.PIPE)
    await asyncio.wait_for(checker.communicate(packed), 30)
    assert checker.returncode == 0  # another decoder, with its own idea of the format


async def test_text_bodies_are_the_snapshots_own_bytes() -> None:
    current = snapshot(1, block("a"), block("b"))
    body = await ExpositionCache().get(current, openmetrics=False, gzipped=False)
    lines = {id(part) for parts in current.blocks for part in parts}
    assert lines <= {id(part) for part in body.parts}  # referenced, never copied
    assert len(body.parts) == 1 + len(FAMILIES) * 3  # own, then a header and a part per block


async def test_a_new_snapshot_deflates_only_the_blocks_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deflated: list[bytes] = []
    real = exposition.deflate

    def counting(part: bytes) -> bytes:
        deflated.append(part)
        return real(part)

    monkeypatch.setattr(exposition, "deflate", counting)
    cache = ExpositionCache()
    kept, changed = block("kept"), block("old")
    await cache.get(snapshot(1, kept, changed), openmetrics=False, gzipped=True)
    assert len(deflated) == 1 + 2 * len(FAMILIES) + len(FAMILIES)  # own, headers, two blocks
    deflated.clear()
    newer = snapshot(2, kept, block("new"), published=60.0)
    body = await cache.get(newer, openmetrics=False, gzipped=True)
    assert sorted(deflated) == sorted([OWN, *block("new")])
    assert gzip.decompress(b"".join(body.parts)) == render(newer, openmetrics=False)
    deflated.clear()
    again = await cache.get(newer, openmetrics=False, gzipped=True)
    assert again is body and deflated == []


async def test_while_a_gzip_body_builds_a_recent_one_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = ExpositionCache()
    first = snapshot(1, block("a"), published=100.0)
    served = await cache.get(first, openmetrics=False, gzipped=True)
    release = threading.Event()
    real = exposition.deflate

    def held(part: bytes) -> bytes:
        release.wait(10)
        return real(part)

    monkeypatch.setattr(exposition, "deflate", held)
    soon, late = snapshot(2, block("b"), published=101.5), snapshot(3, block("c"), published=200.0)
    recent = cache.get(soon, openmetrics=False, gzipped=True)
    assert await asyncio.wait_for(recent, 5) is served  # 1.5 s older: stands in meanwhile
    waiting = asyncio.create_task(cache.get(late, openmetrics=False, gzipped=True))
    for _ in range(5):
        await asyncio.sleep(0)  # let the scrape run as far as it can
    assert not waiting.done()  # 100 s older: too old to stand in, the scrape waits for its own
    release.set()
    body = await asyncio.wait_for(waiting, 10)
    assert gzip.decompress(b"".join(body.parts)) == render(late, openmetrics=False)
