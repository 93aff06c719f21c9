"""Rendering: a golden exposition for fixed images, format negotiation, promtool's verdict."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from support.exposition import parse_samples
from support.tooling import require_tool

from exporter.gcore.models import Image, Task
from exporter.metrics.exposition import render, wants_gzip, wants_openmetrics
from exporter.metrics.families import (
    FAMILIES,
    NO_VALUES,
    render_health,
    render_usage,
    render_values,
)
from exporter.metrics.snapshot import Snapshot, by_family
from exporter.vocabulary import ImageKey, Scope

GOLDEN = Path(__file__).parent / "golden" / "images.prom"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
SCOPE = Scope(42, 76)


def image(image_id: str, name: str, **fields: object) -> Image:
    data: dict[str, object] = {
        "id": image_id,
        "name": name,
        "status": "active",
        "size": 3221225472,
        "min_disk": 20,
        "min_ram": 2048,
        "created_at": "2026-05-01T12:00:00",
        "updated_at": "2026-05-31T12:00:00Z",
        "visibility": "private",
        "architecture": "x86_64",
        "gpu_driver": "nvidia",
        "gpu_driver_version": "570.148.08",
        "tags": [{"key": "team", "value": "ml", "read_only": False}],
    }
    data.update(fields)
    return Image.model_validate(data)


def rendered() -> list[tuple[bytes, ...]]:
    task = Task.model_validate(
        {
            "id": "t-1",
            "state": "ERROR",
            "task_type": "upload_virtual_image",
            "created_on": "2026-06-01T11:30:00",
            "finished_on": "2026-06-01T11:40:00",
            "error": 'Image "cuda" failed:\nchecksum mismatch',
        }
    )
    active, locked, odd, gone = (
        ImageKey(SCOPE, f"img-{n}") for n in ("active", "locked", "odd", "gone")
    )
    return [
        render_values(active, image("img-active", "base"), now=NOW, status_since=NOW - 86400)
        + render_health(active, up=True, last_success=NOW)
        + render_usage(active, 2),
        render_values(
            locked,
            image("img-locked", "uploading", status="saving", task_id="t-1", size=None),
            now=NOW,
            task=task,
            lock_started=NOW - 1800,
        )
        + render_health(locked, up=True, last_success=NOW)
        + render_usage(locked, 0),
        render_values(
            odd, image("img-odd", 'q"uote\\back\nnew ünï', status="Quarantined", tags=[]), now=NOW
        )
        + render_health(
            odd,
            up=False,
            last_success=NOW - 60,
            errors={"server_error": 2},
            last_error="server_error",
        )
        + render_usage(odd, None),  # its clusters never listed: no count
        NO_VALUES
        + render_health(
            gone, up=False, errors={"not_found": 1, "timeout": 3}, last_error="not_found"
        )
        + render_usage(gone, 1),  # a cluster boots from an image that is gone
    ]


def snapshot() -> Snapshot:
    own = b"# HELP gcore_exporter_images Images.\n# TYPE gcore_exporter_images gauge\n"
    own += b"gcore_exporter_images 4.0\n"
    return Snapshot(1, by_family(rendered()), own_text=own, own_openmetrics=own, ready=True)


def test_exposition_matches_golden_file() -> None:
    text = render(snapshot(), openmetrics=False).decode()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_golden_file_passes_promtool_check_metrics() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=GOLDEN.read_bytes(), capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


def test_openmetrics_rendering_parses_and_ends_with_eof() -> None:
    text = render(snapshot(), openmetrics=True).decode()
    families = {f.name: f for f in parse_om(text)}  # type: ignore[no-untyped-call]
    assert families["gcore_gpu_image_fetch_errors"].type == "counter"
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1


def test_rendered_values_follow_the_views() -> None:
    samples = parse_samples(render(snapshot(), openmetrics=False).decode())
    locked = {"project_id": "42", "region_id": "76", "image_id": "img-locked"}
    assert samples[("gcore_gpu_image_lock_age_seconds", frozenset(locked.items()))] == 1800
    gone = [k for k in samples if dict(k[1]).get("image_id") == "img-gone"]
    assert sorted(k[0] for k in gone) == [
        "gcore_gpu_image_clusters",
        "gcore_gpu_image_fetch_errors_total",
        "gcore_gpu_image_fetch_errors_total",
        "gcore_gpu_image_last_error_info",
        "gcore_gpu_image_up",
    ]


def test_a_snapshot_names_the_families_it_carries() -> None:
    """The body follows the families the snapshot carries, each with its own lines: no list of
    families elsewhere decides what a block's part is."""
    blocks = rendered()
    up, errors = (
        [f.name for f in FAMILIES].index(name)
        for name in ("gcore_gpu_image_up", "gcore_gpu_image_fetch_errors_total")
    )
    families = by_family(blocks)
    chosen = (families[errors], families[up])  # two families, in another order than FAMILIES
    text = render(Snapshot(1, chosen, b"", b"", ready=True), openmetrics=False).decode()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert helps == ["gcore_gpu_image_fetch_errors_total", "gcore_gpu_image_up"]
    assert text.split("# HELP gcore_gpu_image_up")[1].count("gcore_gpu_image_up{") == 4


def test_blocks_of_another_shape_than_their_families_are_refused() -> None:
    with pytest.raises(AssertionError, match="one per family"):
        by_family([rendered()[0][:-1]])


def test_lone_surrogate_in_a_name_does_not_break_rendering() -> None:
    chunks = render_values(ImageKey(SCOPE, "x"), image("x", "bad \ud800 name"), now=NOW)
    assert b'name="bad ? name"' in b"".join(chunks)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5", True),
        ("application/openmetrics-text; q=0", False),
        ("application/openmetrics-text;q=bogus", False),
        ("*/*", False),
    ],
)
def test_openmetrics_negotiation(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("", False),
        ("gzip", True),
        ("br, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("identity", False),
    ],
)
def test_gzip_negotiation(encoding: str, expected: bool) -> None:
    assert wants_gzip(encoding) is expected
