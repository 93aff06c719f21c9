"""Per-image transitions, read like a table: no HTTP, no event loop, a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.families import FAMILIES, NO_VALUES
from exporter.image_store import ImageStore
from exporter.models import Image, Task
from exporter.vocabulary import FetchError, ImageKey, Reason, Scope

SCOPE = Scope(1, 2)
KEY = ImageKey(SCOPE, "img-1")
STALE_AFTER = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def image(**fields: Any) -> Image:
    data: dict[str, Any] = {
        "id": KEY.image_id,
        "name": "base",
        "status": "active",
        "created_at": "2026-01-01T00:00:00",
        "updated_at": "2026-01-02T00:00:00",
    }
    return Image.model_validate(data | fields)


def error(reason: Reason) -> FetchError:
    return FetchError(reason, f"HTTP ({reason})")


def text(store: ImageStore) -> str:
    return b"".join(b"".join(chunks) for chunks in store.rendered()).decode()


def family(store: ImageStore, name: str) -> str:
    index = [f.name for f in FAMILIES].index(name)
    return b"".join(chunks[index] for chunks in store.rendered()).decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> ImageStore:
    return ImageStore(stale_after=STALE_AFTER, clock=clock)


def test_a_new_image_is_down_with_no_values(store: ImageStore) -> None:
    state = store.add(KEY, explicit=True)
    assert (state.up, state.values) == (False, NO_VALUES)
    assert family(store, "gcore_gpu_image_up").endswith(" 0\n")


def test_success_renders_values_and_marks_up(store: ImageStore, clock: Clock) -> None:
    store.succeeded(KEY, image(), None)
    state = store.get(KEY)
    assert state is not None and state.up and state.last_success == clock.now
    assert 'name="base"' in family(store, "gcore_gpu_image_info")


@pytest.mark.parametrize(
    ("reason", "seconds_since_success", "values_kept"),
    [
        ("server_error", 299, True),
        ("server_error", 300, True),
        ("server_error", 301, False),
        ("timeout", 10, True),
        ("not_found", 1, False),  # a 404 withdraws values at once
    ],
)
def test_failure_keeps_values_until_stale_after(
    store: ImageStore, clock: Clock, reason: Reason, seconds_since_success: float, values_kept: bool
) -> None:
    store.succeeded(KEY, image(), None)
    clock.now += seconds_since_success
    store.failed(KEY, error(reason))
    state = store.get(KEY)
    assert state is not None and not state.up
    assert (state.values != NO_VALUES) is values_kept
    assert f'reason="{reason}"' in family(store, "gcore_gpu_image_last_error_info")


def test_failure_before_any_success_has_no_values(store: ImageStore) -> None:
    store.failed(KEY, error("timeout"))
    state = store.get(KEY)
    assert state is not None and state.values == NO_VALUES and state.errors == {"timeout": 1}


def test_errors_count_by_reason_and_success_clears_last_error(store: ImageStore) -> None:
    for reason in ("timeout", "timeout", "server_error"):
        store.failed(KEY, error(reason))
    store.succeeded(KEY, image(), None)
    assert 'reason="timeout"} 2' in family(store, "gcore_gpu_image_fetch_errors_total")
    assert family(store, "gcore_gpu_image_last_error_info") == ""


def test_lock_age_counts_from_first_sight_then_from_the_task(
    store: ImageStore, clock: Clock
) -> None:
    store.succeeded(KEY, image(task_id="t-1"), None)
    clock.now += 600
    store.succeeded(KEY, image(task_id="t-1"), None)
    assert family(store, "gcore_gpu_image_lock_age_seconds").endswith(" 600\n")
    created = datetime.fromtimestamp(clock.now - 3600, UTC).isoformat()
    task = Task.model_validate({"id": "t-1", "state": "RUNNING", "created_on": created})
    store.succeeded(KEY, image(task_id="t-1"), task)
    assert family(store, "gcore_gpu_image_lock_age_seconds").endswith(" 3600\n")
    store.succeeded(KEY, image(task_id="t-2"), None)  # another lock starts from now
    assert family(store, "gcore_gpu_image_lock_age_seconds").endswith(" 0\n")


def test_age_is_never_negative(store: ImageStore, clock: Clock) -> None:
    future = datetime.fromtimestamp(clock.now + 3600, UTC).isoformat()
    store.succeeded(KEY, image(created_at=future), None)
    assert family(store, "gcore_gpu_image_age_seconds").endswith(" 0\n")


def test_complete_listing_removes_discovered_images_only(store: ImageStore) -> None:
    explicit, listed, gone = (ImageKey(SCOPE, i) for i in ("explicit", "listed", "gone"))
    elsewhere = ImageKey(Scope(9, 9), "elsewhere")
    store.add(explicit, explicit=True)
    for key in (listed, gone, elsewhere):
        store.add(key)
    assert store.retain(SCOPE, [listed.image_id]) == 1
    assert gone not in store
    assert all(key in store for key in (explicit, listed, elsewhere))


def test_every_change_is_announced(clock: Clock) -> None:
    changes: list[None] = []
    store = ImageStore(stale_after=STALE_AFTER, clock=clock, on_change=lambda: changes.append(None))
    store.add(KEY)
    store.succeeded(KEY, image(), None)
    store.failed(KEY, error("timeout"))
    store.retain(SCOPE, [])
    assert len(changes) == 4
