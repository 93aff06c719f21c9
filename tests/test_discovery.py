"""Which scopes the wildcards stand for: pure functions over projects and regions, no I/O."""

from __future__ import annotations

from typing import Any

from exporter.demo.fake_gcore import make_project, make_region
from exporter.gcore.models import Project, Region
from exporter.polling.discovery import active_regions, expand, usable_projects
from exporter.vocabulary import ImageKey, Scope, Targets, Wildcard


def projects(*raw: dict[str, Any]) -> tuple[Project, ...]:
    return tuple(Project.model_validate(p) for p in raw)


def regions(*raw: dict[str, Any]) -> tuple[Region, ...]:
    return tuple(Region.model_validate(r) for r in raw)


PROJECTS = projects(
    make_project(1, "a"),
    make_project(2, "b", state="DELETED"),
    make_project(3, "c", state=None),
    make_project(4, "d", state="active"),
    make_project(5, "e", state="SUSPENDED"),
)
REGIONS = regions(
    make_region(10, "gpu"),
    make_region(20, "gpu and bare metal", baremetal=True),
    make_region(30, "no gpu", gpu=False),
    make_region(40, "bare metal only", gpu=False, baremetal=True),
    make_region(50, "gpu in maintenance", state="MAINTENANCE", baremetal=True),
    make_region(60, "gpu deleted", state="DELETED"),
)


def test_projects_that_are_active_or_carry_no_state_are_used() -> None:
    assert usable_projects(PROJECTS) == [1, 3, 4]


def test_a_project_without_a_state_key_is_used() -> None:
    raw = make_project(7, "no state")
    del raw["state"]
    assert usable_projects(projects(raw)) == [7]


def test_every_active_region_is_used_whatever_its_capability_flags_say() -> None:
    assert active_regions(REGIONS) == [10, 20, 30, 40]


def test_duplicate_ids_in_a_listing_count_once() -> None:
    twice = projects(make_project(1, "a"), make_project(1, "a again"))
    assert usable_projects(twice) == [1]


def test_star_is_every_usable_project_times_every_active_region() -> None:
    config = Targets((), (), wildcards=(Wildcard(None, None),))
    found = expand(config, PROJECTS, REGIONS).discovered
    assert found == tuple(Scope(p, r) for p in (1, 3, 4) for r in (10, 20, 30, 40))


def test_baremetal_star_ignores_the_baremetal_flag() -> None:
    config = Targets((), (), wildcards=(Wildcard(None, None, "baremetal"),))
    found = expand(config, PROJECTS, REGIONS).discovered
    assert found == tuple(Scope(p, r, "baremetal") for p in (1, 3, 4) for r in (10, 20, 30, 40))


def test_project_star_needs_no_project_listing() -> None:
    config = Targets((), (), wildcards=(Wildcard(2, None),))
    assert expand(config, None, REGIONS).discovered == tuple(Scope(2, r) for r in (10, 20, 30, 40))


def test_region_of_star_region_is_taken_as_given() -> None:
    config = Targets((), (), wildcards=(Wildcard(None, 30),))  # no GPU flag: still listed
    assert expand(config, PROJECTS, None).discovered == (Scope(1, 30), Scope(3, 30), Scope(4, 30))


def test_nothing_is_found_before_anything_was_listed() -> None:
    config = Targets((), (), wildcards=(Wildcard(None, None), Wildcard(1, None)))
    assert expand(config, None, None).discovered == ()


def test_configured_scope_stays_configured_and_images_it_or_a_found_one_covers_go() -> None:
    inside_found = ImageKey(Scope(1, 10), "in-found")
    elsewhere = ImageKey(Scope(9, 10), "elsewhere")
    bare_metal_twin = ImageKey(Scope(1, 10, "baremetal"), "other-kind")
    config = Targets(
        (inside_found, elsewhere, bare_metal_twin),
        (Scope(1, 20),),
        wildcards=(Wildcard(1, None),),
    )
    expanded = expand(config, PROJECTS, REGIONS)
    assert expanded.scopes == (Scope(1, 20),)
    assert expanded.discovered == (Scope(1, 10), Scope(1, 30), Scope(1, 40))
    assert expanded.images == (elsewhere, bare_metal_twin)
    assert expanded.wildcards == config.wildcards


def test_overlapping_wildcards_find_each_scope_once() -> None:
    config = Targets(
        (), (), wildcards=(Wildcard(None, None), Wildcard(1, None), Wildcard(None, 10))
    )
    found = expand(config, PROJECTS, REGIONS).discovered
    assert len(found) == len(set(found)) == 12


def test_a_region_without_capability_flags_is_valid_they_are_hints() -> None:
    raw = make_region(10, "new api")
    del raw["has_ai_gpu"], raw["has_baremetal"]
    region = Region.model_validate(raw)
    assert (region.has_ai_gpu, region.has_baremetal) == (None, None)
