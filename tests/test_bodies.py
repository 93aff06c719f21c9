"""Bodies built from blocks: no copies of the lines, and gzip built only for what changed."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from exporter.metrics import exposition
from exporter.metrics.exposition import ExpositionCache, render
from exporter.metrics.families import FAMILIES
from exporter.metrics.snapshot import Snapshot, by_family

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
    return Snapshot(version, by_family(blocks), OWN, OWN, ready=True, published=published)


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
    lines = {id(part) for _, parts in current.families for part in parts}
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
