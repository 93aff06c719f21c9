"""Turns one image's state into its exposition lines, one chunk per metric family.

Families are data (`FAMILIES`). Each image is rendered into byte chunks indexed like `FAMILIES`: its
values once per successful fetch, its health once per attempt, so a scrape only concatenates
(kube-state-metrics' per-object rendering) and last known values survive failures unchanged.
For one active, unlocked image the chunks read, family by family:

    gcore_gpu_image_info{project_id="1",region_id="10",image_id="f0e1…",name="ubuntu-22.04-gpu",…} 1
    gcore_gpu_image_status{project_id="1",region_id="10",image_id="f0e1…",status="active"} 1
    gcore_gpu_image_status{project_id="1",region_id="10",image_id="f0e1…",status="queued"} 0
    gcore_gpu_image_size_bytes{project_id="1",region_id="10",image_id="f0e1…"} 3221225472
    gcore_gpu_image_locked{project_id="1",region_id="10",image_id="f0e1…"} 0
    gcore_gpu_image_up{project_id="1",region_id="10",image_id="f0e1…"} 1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from exporter.client import Reason
from exporter.config import ImageKey
from exporter.models import Image, Task

KNOWN_STATUSES: Final = (
    "active",
    "queued",
    "saving",
    "uploading",
    "importing",
    "killed",
    "deleted",
    "pending_delete",
    "deactivated",
)
INFO_FIELDS: Final = (
    "architecture",
    "os_distro",
    "os_type",
    "os_version",
    "visibility",
    "ssh_key",
    "disk_format",
    "hw_firmware_type",
    "gpu_driver",
    "gpu_driver_type",
    "gpu_driver_version",
    "cuda_toolkit_version",
)
_CACHED = "Cached from the last poll. "


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Literal["gauge", "counter"]
    help: str


VALUE_FAMILIES: Final = (
    Family("gcore_gpu_image_info", "gauge", "Descriptive attributes of a GPU image, always 1."),
    Family(
        "gcore_gpu_image_status",
        "gauge",
        "Image status: 1 for the current one, 0 for the other known statuses.",
    ),
    Family("gcore_gpu_image_size_bytes", "gauge", "Image size; absent while Gcore reports none."),
    Family("gcore_gpu_image_min_disk_bytes", "gauge", "Minimal boot volume size for the image."),
    Family("gcore_gpu_image_min_ram_bytes", "gauge", "Minimal RAM needed to boot the image."),
    Family("gcore_gpu_image_locked", "gauge", "1 while a task holds a lock on the image."),
    Family(
        "gcore_gpu_image_lock_age_seconds",
        "gauge",
        "How long the image has been locked: since the task was created, else since first seen.",
    ),
    Family(
        "gcore_gpu_image_task_info",
        "gauge",
        "The task holding the image's lock (empty labels where the Tasks API gave no answer).",
    ),
    Family("gcore_gpu_image_created_timestamp_seconds", "gauge", "When the image was created."),
    Family("gcore_gpu_image_updated_timestamp_seconds", "gauge", "When the image last changed."),
    Family("gcore_gpu_image_age_seconds", "gauge", "Time since the image was created."),
    Family("gcore_gpu_image_tag_info", "gauge", "One series per tag of the image, always 1."),
)
HEALTH_FAMILIES: Final = (
    Family("gcore_gpu_image_up", "gauge", "Whether the last fetch of this image succeeded."),
    Family(
        "gcore_gpu_image_last_success_timestamp_seconds",
        "gauge",
        "When this image was last fetched successfully.",
    ),
    Family(
        "gcore_gpu_image_fetch_errors_total",
        "counter",
        "Failed fetches of this image by reason (a series appears with its first failure).",
    ),
    Family(
        "gcore_gpu_image_last_error_info",
        "gauge",
        "Reason of the failure of the last fetch; present only while up is 0.",
    ),
)
FAMILIES: Final = VALUE_FAMILIES + HEALTH_FAMILIES
NO_VALUES: Final = (b"",) * len(VALUE_FAMILIES)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return repr(value)


def family_header(family: Family, openmetrics: bool) -> bytes:
    name = family.name
    if openmetrics and family.kind == "counter":
        name = name.removesuffix("_total")
    return (
        f"# HELP {name} {_CACHED}{escape_help(family.help)}\n# TYPE {name} {family.kind}\n".encode()
    )


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)


def _identity(key: ImageKey) -> str:
    scope = key.scope
    return _labels(
        (
            ("project_id", str(scope.project_id)),
            ("region_id", str(scope.region_id)),
            ("image_id", key.image_id),
        )
    )


class _Lines:
    """Collects sample lines per family for one image."""

    def __init__(self, key: ImageKey, families: tuple[Family, ...]) -> None:
        self._base = _identity(key)
        self._families = families
        self._lines: dict[str, list[str]] = {family.name: [] for family in families}

    def add(self, name: str, value: float, extra: tuple[tuple[str, str], ...] = ()) -> None:
        labels = f"{self._base},{_labels(extra)}" if extra else self._base
        self._lines[name].append(f"{name}{{{labels}}} {format_value(value)}\n")

    def chunks(self) -> tuple[bytes, ...]:
        # errors="replace": a lone surrogate from JSON must not sink the whole scrape
        return tuple(
            "".join(self._lines[f.name]).encode("utf-8", "replace") for f in self._families
        )


def render_values(
    key: ImageKey,
    image: Image,
    *,
    now: float,
    task: Task | None = None,
    lock_started: float | None = None,
) -> tuple[bytes, ...]:
    """What a successful fetch knows, one chunk per family of `VALUE_FAMILIES`.

    `task` is the task that holds the image's lock, when the Tasks API told us.
    """
    out = _Lines(key, VALUE_FAMILIES)
    info = (("name", image.name), *((f, getattr(image, f) or "") for f in INFO_FIELDS))
    out.add("gcore_gpu_image_info", 1, info)
    status = image.status.strip().lower() or "unknown"
    for known in KNOWN_STATUSES:
        out.add("gcore_gpu_image_status", int(known == status), (("status", known),))
    if status not in KNOWN_STATUSES:
        out.add("gcore_gpu_image_status", 1, (("status", status),))
    if image.size is not None:
        out.add("gcore_gpu_image_size_bytes", image.size)
    if image.min_disk is not None:
        out.add("gcore_gpu_image_min_disk_bytes", image.min_disk * 2**30)
    if image.min_ram is not None:
        out.add("gcore_gpu_image_min_ram_bytes", image.min_ram * 2**20)
    out.add("gcore_gpu_image_locked", int(image.task_id is not None))
    if image.task_id is not None:
        if lock_started is not None:
            out.add("gcore_gpu_image_lock_age_seconds", max(0.0, now - lock_started))
        out.add(
            "gcore_gpu_image_task_info",
            1,
            (
                ("task_id", image.task_id),
                ("task_type", (task.task_type or "") if task else ""),
                ("task_state", task.state if task else ""),
            ),
        )
    created = image.created_at.timestamp()
    out.add("gcore_gpu_image_created_timestamp_seconds", created)
    out.add("gcore_gpu_image_updated_timestamp_seconds", image.updated_at.timestamp())
    out.add("gcore_gpu_image_age_seconds", max(0.0, now - created))
    for tag in image.tags or ():
        read_only = str(tag.read_only).lower()
        tag_labels = (("key", tag.key), ("value", tag.value), ("read_only", read_only))
        out.add("gcore_gpu_image_tag_info", 1, tag_labels)
    return out.chunks()


def render_health(
    key: ImageKey,
    *,
    up: bool,
    last_success: float | None = None,
    errors: Mapping[Reason, int] | None = None,
    last_error: Reason | None = None,
) -> tuple[bytes, ...]:
    """How fetching the image goes, one chunk per family of `HEALTH_FAMILIES`."""
    out = _Lines(key, HEALTH_FAMILIES)
    out.add("gcore_gpu_image_up", int(up))
    if last_success is not None:
        out.add("gcore_gpu_image_last_success_timestamp_seconds", last_success)
    for reason, count in sorted((errors or {}).items()):
        out.add("gcore_gpu_image_fetch_errors_total", count, (("reason", reason),))
    if not up and last_error is not None:
        out.add("gcore_gpu_image_last_error_info", 1, (("reason", last_error),))
    return out.chunks()
