"""Blocks against a plain model: whatever is placed, staged or removed, the view says the same."""

from __future__ import annotations

import asyncio
import random

import pytest

from exporter.metrics.blocks import Blocks
from exporter.vocabulary import ImageKey, Scope

FAMILIES = 4
SCOPE = Scope(1, 1)


class Model:
    """The reference: every image's chunks in a dict, in insertion order."""

    def __init__(self, capacity: int) -> None:
        self.blocks = Blocks(FAMILIES, capacity=capacity)
        self.chunks: dict[ImageKey, tuple[bytes, ...]] = {}
        self.where: dict[ImageKey, object] = {}
        self.serial = 0

    def lines(self, key: ImageKey, family: int) -> bytes:
        self.serial += 1
        return f"f{family}{{image={key.image_id}}} {self.serial}\n".encode() * (self.serial % 3)

    def place(self, key: ImageKey) -> None:
        chunks = tuple(self.lines(key, f) for f in range(FAMILIES))
        self.where[key] = self.blocks.place(key, chunks)
        self.chunks[key] = chunks

    def stage(self, key: ImageKey, families: set[int]) -> None:
        staged = tuple(self.lines(key, f) if f in families else None for f in range(FAMILIES))
        self.blocks.stage(self.where[key], key, staged)  # type: ignore[arg-type]
        old = self.chunks[key]
        self.chunks[key] = tuple(old[f] if c is None else c for f, c in enumerate(staged))

    def remove(self, keys: list[ImageKey]) -> None:
        self.blocks.remove((self.where.pop(key), key) for key in keys)  # type: ignore[misc]
        for key in keys:
            del self.chunks[key]

    def expected(self) -> list[bytes]:
        return [b"".join(c[f] for c in self.chunks.values()) for f in range(FAMILIES)]

    def seen(self) -> list[bytes]:
        view = self.blocks.view()
        assert all(len(parts) == FAMILIES for parts in view)
        return [b"".join(parts[f] for parts in view) for f in range(FAMILIES)]


def key(n: int) -> ImageKey:
    return ImageKey(SCOPE, f"i{n}")


def random_step(model: Model, rng: random.Random, next_key: list[int]) -> None:
    keys = list(model.chunks)
    action = rng.random()
    if action < 0.35 or not keys:
        model.place(key(next_key[0]))
        next_key[0] += 1
    elif action < 0.8:
        families = {f for f in range(FAMILIES) if rng.random() < 0.5} or {0}
        model.stage(rng.choice(keys), families)
    else:
        model.remove(rng.sample(keys, rng.randint(1, min(3, len(keys)))))


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("capacity", [1, 3, 7])
def test_any_history_folds_to_what_a_plain_model_holds(seed: int, capacity: int) -> None:
    rng = random.Random(seed)
    model = Model(capacity)
    next_key = [0]
    for _ in range(60):
        random_step(model, rng, next_key)
        if rng.random() < 0.3:
            model.blocks.settle_now()
            assert model.seen() == model.expected()
    for image, chunks in model.chunks.items():
        assert model.where[image].chunks(image) == chunks  # type: ignore[attr-defined]
    model.blocks.settle_now()
    assert model.seen() == model.expected()


async def test_changes_staged_while_a_fold_pauses_are_not_lost() -> None:
    rng = random.Random(7)
    model = Model(capacity=5)
    next_key = [0]
    for _ in range(40):
        model.place(key(next_key[0]))
        next_key[0] += 1
    for _ in range(20):
        settling = asyncio.create_task(model.blocks.settle())
        for _ in range(rng.randint(0, 8)):
            await asyncio.sleep(0)  # the fold is between two families now
            random_step(model, rng, next_key)
        await settling
    await model.blocks.settle()
    assert model.seen() == model.expected()


def test_a_view_is_unchanged_by_later_folds() -> None:
    model = Model(capacity=3)
    for n in range(5):
        model.place(key(n))
    model.blocks.settle_now()
    before = model.blocks.view()
    joined = [b"".join(parts[f] for parts in before) for f in range(FAMILIES)]
    model.stage(key(1), {0, 1, 2, 3})
    model.remove([key(4)])
    model.blocks.settle_now()
    assert [b"".join(parts[f] for parts in before) for f in range(FAMILIES)] == joined
    assert model.seen() == model.expected() != joined


def test_empty_blocks_leave_the_view() -> None:
    model = Model(capacity=2)
    for n in range(4):
        model.place(key(n))
    model.remove([key(0), key(1)])
    model.blocks.settle_now()
    assert len(model.blocks.view()) == 1


async def test_ripe_only_folds_just_the_blocks_a_round_went_through() -> None:
    model = Model(capacity=2)
    for n in range(4):
        model.place(key(n))
    await model.blocks.settle()
    before = model.blocks.view()
    model.stage(key(0), {0, 1, 2, 3})
    model.stage(key(1), {0})  # the first block is all staged: ripe
    model.stage(key(2), {1})  # the second is not
    await model.blocks.settle(ripe_only=True)
    view = model.blocks.view()
    assert view[0] == tuple(b"".join(model.chunks[key(n)][f] for n in (0, 1)) for f in range(4))
    assert view[1] is before[1]  # not folded yet: key 3 has not been fetched this round
    await model.blocks.settle()
    assert model.seen() == model.expected()


async def test_a_fold_cancelled_between_two_families_loses_nothing() -> None:
    """A publish is cancelled with its poller (a reload): what the fold had taken stays staged."""
    rng = random.Random(11)
    model = Model(capacity=4)
    next_key = [0]
    for round_ in range(30):
        for _ in range(rng.randint(1, 6)):
            random_step(model, rng, next_key)
        settling = asyncio.create_task(model.blocks.settle())
        for _ in range(rng.randint(1, FAMILIES)):
            await asyncio.sleep(0)  # the fold is between two families now
        settling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await settling
        if round_ % 3 == 0:
            await model.blocks.settle()
            assert model.seen() == model.expected()
    await model.blocks.settle()
    assert model.seen() == model.expected()
