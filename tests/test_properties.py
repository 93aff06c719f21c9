"""Properties: any image JSON in, an exposition that Prometheus accepts out.

Generated listings, images and tasks (valid, half valid and junk: huge integers, NaN, lone
surrogates, dot-segment ids, duplicate tags) go through the real client, fetcher and image store;
every exposition must parse with prometheus_client (text and OpenMetrics) without a duplicate
series, and all of them together must pass `promtool check metrics` (called once, to stay fast).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
from datetime import datetime
from typing import Any

import aiohttp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from pydantic import SecretStr, ValidationError
from support.exposition import parse_samples
from support.mocking import Mocked
from support.tooling import require_tool

from exporter.gcore.client import GcoreClient
from exporter.gcore.models import Image
from exporter.gcore.transport import RetryPolicy, Transport
from exporter.metrics.exposition import render
from exporter.metrics.families import format_value, render_health, render_usage, render_values
from exporter.metrics.image_store import ImageStore
from exporter.metrics.scope_health import ScopeHealth
from exporter.metrics.snapshot import Snapshot, by_family
from exporter.metrics.telemetry import Telemetry
from exporter.polling.fetcher import Fetcher
from exporter.polling.scope_cadence import ScopeCadence
from exporter.polling.task_cache import TaskCache
from exporter.vocabulary import ImageKey, Scope, Targets

BASE = "https://api.gcore.test"
EXPLICIT_ID = "img-a"
INFO_FIELDS = ("visibility", "architecture", "os_distro", "os_version", "gpu_driver_version")

Json = Any
Rendered = tuple[tuple[bytes, ...], ...]

# --- what an answer may hold ---------------------------------------------------------------------

SPECIAL_TEXT = ["", ".", "..", "\ud800", "\udfff", 'q"\\\n', "a/b?c#d", "\x00\r\t", "\u2028"]
text = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(SPECIAL_TEXT)
BIG = [2**53 - 1, 2**53 + 1, 2**63, 2**64, 2**1024 - 1, 2**1024, 10**308, 2 * 10**308, 10**400]
integers = st.integers() | st.sampled_from(BIG + [-n for n in BIG])
leaves = (
    st.none() | st.booleans() | integers | st.floats(allow_nan=True, allow_infinity=True) | text
)
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=8,
)
ids = st.sampled_from([EXPLICIT_ID, "img-b", "\ud800", "\udbff", "..", "", "a/../b?x=1"]) | text


def _iso(moment: datetime, minutes: int | None) -> str:
    if minutes is None:
        return moment.isoformat()
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    return f"{moment.isoformat()}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
iso = st.builds(_iso, moments, st.none() | st.integers(-1439, 1439))
timestamps = iso | iso | st.sampled_from(["", "now", "2026-13-01T00:00:00", "1e400"])
task_ids = st.sampled_from(["t-1", "..", "", "\ud800", "../../v3?limit=1"]) | text
tag_keys = st.sampled_from(["team", "\ud800", "\udc00"])  # few: duplicates are likely
tag_values = st.sampled_from(["ml", "\udfff"])
tags = st.lists(
    st.fixed_dictionaries(
        {"key": st.one_of(tag_keys, tag_keys, text), "value": st.one_of(tag_values, text)},
        optional={"read_only": st.booleans()},
    ),
    max_size=5,
)
statuses = st.sampled_from(["active", "ACTIVE ", "queued", "", "\ud800"]) | text
typed = {  # each field of the type the exporter expects, with values anywhere in its range
    "id": ids,
    "name": text,
    "status": statuses,
    "created_at": timestamps,
    "updated_at": st.none() | timestamps,
    "size": st.none() | integers,
    "min_disk": st.none() | integers,
    "min_ram": st.none() | integers,
    "task_id": st.none() | task_ids,
    "tags": st.none() | tags,
    "some_future_field": json_values,
    **{name: st.none() | text for name in INFO_FIELDS},
}
REQUIRED = ("id", "name", "status", "created_at")


def _fields(junk: st.SearchStrategy[Json]) -> st.SearchStrategy[dict[str, Json]]:
    return st.fixed_dictionaries(
        {name: typed[name] | junk for name in REQUIRED},
        optional={name: values | junk for name, values in typed.items() if name not in REQUIRED},
    )


typed_images = _fields(st.nothing())
images = st.one_of(typed_images, typed_images, _fields(json_values))  # mostly well typed
listings = st.lists(st.one_of(images, images, images, json_values), max_size=6)
tasks = (
    st.fixed_dictionaries(
        {"id": task_ids, "state": text},
        optional={"task_type": st.none() | text, "created_on": timestamps},
    )
    | json_values
)
counts = st.none() | st.integers(-2, 8) | st.sampled_from([10**9, 10**400])


# --- one poll of generated answers ---------------------------------------------------------------


async def poll(number: int, items: list[Json], count: int | None, task: Json) -> Rendered:
    """Discover scope (number, 1), whose listing holds `items`, and fetch an explicit image in
    scope (number, 2) that answers with the first item; every task lookup answers `task`."""
    page = {"count": len(items) if count is None else count, "results": items}
    with Mocked() as api:
        api.get(re.compile(r".*/images\?.*"), body=json.dumps(page), repeat=True)
        first = json.dumps(items[0] if items else None)
        api.get(re.compile(r".*/images/[^?]*$"), body=first, repeat=True)
        api.get(re.compile(r".*/cloud/v1/tasks/.*"), body=json.dumps(task), repeat=True)
        async with aiohttp.ClientSession() as session:
            telemetry = Telemetry()
            client = GcoreClient(
                Transport(
                    session,
                    BASE,
                    SecretStr("key"),
                    timeout=5.0,
                    concurrency=4,
                    max_response_size=2**20,
                    telemetry=telemetry,
                    retry=RetryPolicy(attempts=1),
                )
            )
            store = ImageStore(stale_after=60.0)
            tasks_cache = TaskCache(client.get_task, ttl=60.0)
            scopes = ScopeHealth(telemetry)
            cadence = ScopeCadence(interval=60, relist_after=600)
            fetcher = Fetcher(
                client, store=store, tasks=tasks_cache, scopes=scopes, cadence=cadence
            )
            scope, explicit = Scope(number, 1), ImageKey(Scope(number, 2), EXPLICIT_ID)
            fetcher.register(Targets(images=(explicit,), scopes=(scope,)))
            await fetcher.fetch(scope)
            await fetcher.fetch(explicit)
            await fetcher.close()
    return store.rendered()


def well_formed(image_id: str, **fields: Json) -> dict[str, Json]:
    return {"id": image_id, "name": "n", "status": "active", "created_at": "2026-01-01", **fields}


# Known troubles, tried on every run before the generated ones.
TROUBLES = [
    well_formed("\ud800"),
    well_formed("\udbff"),  # renders as the same `?` as the id above: must be one image
    well_formed("huge", size=10**400, min_disk=10**300, min_ram=-(10**310), updated_at=None),
    well_formed(
        "tags",
        tags=[
            {"key": "team", "value": "ml"},
            {"key": "team", "value": "ml"},
            {"key": "\ud800", "value": "x"},
            {"key": "\udc00", "value": "x"},
        ],
    ),
    well_formed("locked", task_id=".."),
]


def exposition(rendered: Rendered, *, openmetrics: bool) -> str:
    snapshot = Snapshot(1, by_family(rendered), own_text=b"", own_openmetrics=b"", ready=True)
    return render(snapshot, openmetrics=openmetrics).decode("utf-8")


def test_any_answers_make_an_exposition_prometheus_accepts() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    every: list[tuple[bytes, ...]] = []

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(items=listings, count=counts, task=tasks)
    @example(items=[well_formed(EXPLICIT_ID), *TROUBLES], count=None, task=None)
    def one_poll(items: list[Json], count: int | None, task: Json) -> None:
        rendered = asyncio.run(poll(len(every) + 1, items, count, task))
        parse_samples(exposition(rendered, openmetrics=False))  # no duplicate series either
        openmetrics = exposition(rendered, openmetrics=True)
        for family in parse_om(openmetrics):  # type: ignore[no-untyped-call]
            assert family.samples is not None
        every.extend(rendered)

    one_poll()
    assert len(every) > 100  # what promtool checks is no handful
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition(tuple(every), openmetrics=False).encode(),
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()[:2000]


@settings(max_examples=300, deadline=None, database=None)
@given(typed_images)
@example(TROUBLES[2])
@example(TROUBLES[3])
def test_any_well_typed_image_renders_without_a_duplicate_series(data: dict[str, Json]) -> None:
    try:
        image = Image.model_validate(json.loads(json.dumps(data)))
    except ValidationError:
        return
    key = ImageKey(Scope(1, 1), image.id)
    chunks = render_values(key, image, now=1.8e9, lock_started=1.7e9)
    rendered = (chunks + render_health(key, up=True, last_success=1.8e9) + render_usage(key, 1),)
    parse_samples(exposition(rendered, openmetrics=False))


@given(st.integers() | st.sampled_from(BIG) | st.floats(allow_nan=True, allow_infinity=True))
def test_a_value_is_written_as_a_finite_float64_or_not_at_all(number: float) -> None:
    shown = format_value(number)
    try:
        fits = math.isfinite(float(number))
    except OverflowError:
        fits = False
    assert (shown is not None) == fits
    if shown is not None:
        assert float(shown) == float(number)
        assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?(e[+-][0-9]+)?", shown), shown
