"""Per-image transitions, read like a table: no HTTP, no event loop, a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from support.clock import Clock

from exporter.gcore.models import Image, Task
from exporter.metrics.cluster_families import NO_CLUSTERS, ClusterCounts
from exporter.metrics.families import FAMILIES, NO_VALUES
from exporter.metrics.image_store import ImageStore
from exporter.vocabulary import FetchError, ImageKey, Reason, Scope

SCOPE = Scope(1, 2)
KEY = ImageKey(SCOPE, "img-1")
STALE_AFTER = 300.0


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


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def since(store: ImageStore) -> str:
    return family(store, "gcore_gpu_image_status_since_timestamp_seconds")


def test_status_since_is_updated_at_at_first_sight_then_the_first_sight_of_a_change(
    store: ImageStore, clock: Clock
) -> None:
    store.succeeded(KEY, image(status="queued", updated_at=iso(clock.now - 500)), None)
    assert since(store).endswith(f" {int(clock.now - 500)}\n")
    clock.now += 60
    store.succeeded(KEY, image(status=" Queued ", updated_at=iso(clock.now)), None)  # same
    assert since(store).endswith(f" {int(clock.now - 560)}\n")
    clock.now += 60
    store.succeeded(KEY, image(status="active", updated_at=iso(clock.now - 45)), None)
    assert since(store).endswith(f" {int(clock.now)}\n")


def test_status_since_is_never_later_than_now(store: ImageStore, clock: Clock) -> None:
    store.succeeded(KEY, image(updated_at=iso(clock.now + 3600)), None)
    assert since(store).endswith(f" {int(clock.now)}\n")


def test_status_since_starts_over_once_values_are_withdrawn(
    store: ImageStore, clock: Clock
) -> None:
    store.succeeded(KEY, image(status="queued", updated_at=iso(clock.now - 500)), None)
    store.failed(KEY, error("not_found"))
    clock.now += 60
    store.succeeded(KEY, image(status="active", updated_at=iso(clock.now - 30)), None)
    assert since(store).endswith(f" {int(clock.now - 30)}\n")


def test_leaving_scope_drops_its_discovered_images_but_not_configured_ones(
    store: ImageStore,
) -> None:
    configured, found = ImageKey(SCOPE, "configured"), ImageKey(SCOPE, "found")
    elsewhere = ImageKey(Scope(9, 9), "elsewhere")
    store.add(configured, explicit=True)
    store.add(found)
    store.add(elsewhere)
    assert store.drop_scope(SCOPE) == 1
    assert [k in store for k in (configured, found, elsewhere)] == [True, False, True]


def test_released_image_goes_unless_a_listing_covers_it(store: ImageStore) -> None:
    covered, alone = ImageKey(SCOPE, "covered"), ImageKey(Scope(9, 9), "alone")
    store.add(covered, explicit=True)
    store.add(alone, explicit=True)
    store.release(covered, listed=True)
    store.release(alone, listed=False)
    assert alone not in store
    assert store.retain(SCOPE, []) == 1  # the listing decides now
    assert covered not in store


def test_adding_a_listed_image_as_configured_pins_it(store: ImageStore) -> None:
    store.add(KEY)
    store.add(KEY, explicit=True)
    assert store.retain(SCOPE, []) == 0


def test_image_listed_under_both_kinds_keeps_the_first(store: ImageStore) -> None:
    twin = ImageKey(Scope(SCOPE.project_id, SCOPE.region_id, "baremetal"), KEY.image_id)
    store.succeeded(KEY, image(name="virtual one"), None)
    store.succeeded(twin, image(name="bare-metal one"), None)
    store.failed(twin, error("timeout"))
    assert twin not in store
    assert len(store) == 1
    assert 'name="virtual one"' in family(store, "gcore_gpu_image_info")
    assert 'kind="virtual"' in family(store, "gcore_gpu_image_info")


def test_kind_of_a_bare_metal_image_is_in_its_info(store: ImageStore) -> None:
    key = ImageKey(Scope(1, 2, "baremetal"), "metal")
    store.succeeded(key, image(id="metal"), None)
    assert family(store, "gcore_gpu_image_info").endswith(',kind="baremetal"} 1\n')


def test_cluster_counts_rerender_only_the_images_whose_count_changed(store: ImageStore) -> None:
    """`gcore_gpu_image_clusters` is an image's line like the others: the cluster poll re-renders
    the images whose count changed, a publication renders none; unknown (its scope's clusters
    never listed) is absent, not 0; an id a cluster writes in another case is the same image."""
    used, upper, elsewhere = (
        ImageKey(SCOPE, "img-a"),
        ImageKey(SCOPE, "IMG-B"),
        ImageKey(Scope(1, 3), "img-c"),
    )
    for key in (used, upper, elsewhere):
        store.add(key, explicit=True)
    listed = frozenset({SCOPE})
    assert store.count_clusters(ClusterCounts(listed, {(1, 2, "img-a"): 2})) == 2
    assert family(store, "gcore_gpu_image_clusters") == (
        'gcore_gpu_image_clusters{project_id="1",region_id="2",image_id="img-a"} 2\n'
        'gcore_gpu_image_clusters{project_id="1",region_id="2",image_id="IMG-B"} 0\n'
    )
    assert store.count_clusters(ClusterCounts(listed, {(1, 2, "img-a"): 2})) == 0
    assert store.count_clusters(ClusterCounts(listed, {(1, 2, "img-b"): 1})) == 2
    store.failed(upper, error("not_found"))  # a cluster on a missing image: still counted
    store.add(ImageKey(SCOPE, "img-d"))  # a new image of a listed scope: counted at once
    assert family(store, "gcore_gpu_image_clusters") == (
        'gcore_gpu_image_clusters{project_id="1",region_id="2",image_id="img-a"} 0\n'
        'gcore_gpu_image_clusters{project_id="1",region_id="2",image_id="IMG-B"} 1\n'
        'gcore_gpu_image_clusters{project_id="1",region_id="2",image_id="img-d"} 0\n'
    )
    assert store.count_clusters(NO_CLUSTERS) == 3  # clusters turned off: every count leaves
    assert family(store, "gcore_gpu_image_clusters") == ""
