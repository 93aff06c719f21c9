"""Which shard exports an image: a jump consistent hash of its id, so that anyone can reproduce it.

The recipe (README, *Scaling*): take the image id's UTF-8 bytes, hash them with SHA-256, read the
digest's first 8 bytes as a big-endian unsigned 64-bit integer, and give that key to the jump
consistent hash of Lamping and Veach (arXiv:1406.2294) with the number of shards. Going from N to
N + 1 shards moves only the images that land on the new shard, about 1/(N + 1) of them, and every
shard computes the same answer without talking to the others.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

_MASK: Final = 2**64 - 1
_LCG: Final = 2862933555777941757  # the jump hash's linear congruential step
_ORDINAL = re.compile(r"-(\d+)$")


def image_hash(image_id: str) -> int:
    """The first 8 bytes of SHA-256 of the id, big-endian: stable across processes and languages."""
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "big")


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: the bucket in [0, buckets) of a 64-bit key."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * _LCG + 1) & _MASK
        jump = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def shard_of(image_id: str, total_shards: int) -> int:
    return jump_hash(image_hash(image_id), total_shards)


def ordinal_from_pod_name(pod_name: str) -> int:
    """A StatefulSet pod's ordinal: the number after the last `-` of its name (`exporter-2`: 2)."""
    match = _ORDINAL.search(pod_name.strip())
    if match is None:
        raise ValueError(f"{pod_name!r} does not end in -ORDINAL, as StatefulSet pods' names do")
    return int(match.group(1))


@dataclass(frozen=True, slots=True)
class Shard:
    """This process's part of the images: shard `ordinal` of `total`."""

    ordinal: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.ordinal < self.total:
            raise ValueError(f"shard {self.ordinal} is not in 0..{self.total - 1}")

    def owns(self, image_id: str) -> bool:
        return self.total == 1 or shard_of(image_id, self.total) == self.ordinal


EVERYTHING: Final = Shard()
