"""Per-image metric families as data: each owns its name, type, help and samples.

An image is rendered into byte chunks indexed like `FAMILIES`: its values once per successful
fetch, its health once per attempt, what uses it (its clusters) when the cluster poll changes
that; so a scrape only concatenates (kube-state-metrics' per-object rendering) and last known
values survive failures unchanged. For one active, unlocked
image the chunks read, family by family:

    gcore_gpu_image_info{project_id="1",region_id="10",image_id="f0e1…",name="ubuntu-22.04-gpu",…} 1
    gcore_gpu_image_status{project_id="1",region_id="10",image_id="f0e1…",status="active"} 1
    gcore_gpu_image_status{project_id="1",region_id="10",image_id="f0e1…",status="queued"} 0
    gcore_gpu_image_size_bytes{project_id="1",region_id="10",image_id="f0e1…"} 3221225472
    gcore_gpu_image_locked{project_id="1",region_id="10",image_id="f0e1…"} 0
    gcore_gpu_image_up{project_id="1",region_id="10",image_id="f0e1…"} 1

Whatever the API sent, the lines parse: a value that is no finite float64 (`size` of 10**400)
drops its sample, never the scrape, and no family yields one label set twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar

from exporter.alerting import KNOWN_STATUSES
from exporter.gcore.models import Image, Task
from exporter.vocabulary import ImageKey, Kind, Reason

CACHED_HELP: Final = "Cached from the last poll. "
ERROR_TEXT_LIMIT: Final = 200  # characters of a task's error text kept in a label
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

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]  # labels beyond the image's identity, and the value
Source = TypeVar("Source")


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a successful fetch knows of an image; `task` is the task holding its lock, if known."""

    image: Image
    now: float
    task: Task | None = None
    lock_started: float | None = None
    kind: Kind = "virtual"
    status_since: float | None = None
    tag_keys: frozenset[str] | None = None  # None: every key


@dataclass(frozen=True, slots=True)
class Health:
    """How fetching an image goes."""

    up: bool
    last_success: float | None = None
    errors: Mapping[Reason, int] = field(default_factory=dict)
    last_error: Reason | None = None


@dataclass(frozen=True, slots=True)
class Family(Generic[Source]):
    name: str
    metric_type: Literal["gauge", "counter"]
    help: str
    samples: Callable[[Source], Iterator[Sample]]

    def header(self, *, openmetrics: bool) -> bytes:
        name, metric_type = self.name, self.metric_type
        if openmetrics and metric_type == "counter":
            name = name.removesuffix("_total")
        text = f"# HELP {name} {CACHED_HELP}{escape_help(self.help)}\n# TYPE {name} {metric_type}\n"
        return text.encode()

    def render(self, identity: str, source: Source) -> bytes:
        name = self.name
        lines = []
        for extra, value in self.samples(source):
            shown = format_value(value)
            if shown is None:
                continue  # no float64 holds it: Prometheus would reject the whole scrape
            if extra:
                lines.append(f"{name}{{{identity},{_labels(extra)}}} {shown}\n")
            else:
                lines.append(f"{name}{{{identity}}} {shown}\n")
        # errors="replace": a lone surrogate from JSON must not sink the whole scrape
        return "".join(lines).encode("utf-8", "replace")


def _info(f: Fetched) -> Iterator[Sample]:
    image = f.image
    fields = ((n, getattr(image, n) or "") for n in INFO_FIELDS)
    yield (("name", image.name), *fields, ("kind", f.kind)), 1


def status_of(image: Image) -> str:
    """The image's status as exported: trimmed, lower case, `unknown` when empty."""
    return image.status.strip().lower() or "unknown"


def _status(f: Fetched) -> Iterator[Sample]:
    status = status_of(f.image)
    for known in KNOWN_STATUSES:
        yield (("status", known),), int(known == status)
    if status not in KNOWN_STATUSES:
        yield (("status", status),), 1


def _size(f: Fetched) -> Iterator[Sample]:
    if f.image.size is not None:
        yield (), f.image.size


def _min_disk(f: Fetched) -> Iterator[Sample]:
    if f.image.min_disk is not None:
        yield (), f.image.min_disk * 2**30


def _min_ram(f: Fetched) -> Iterator[Sample]:
    if f.image.min_ram is not None:
        yield (), f.image.min_ram * 2**20


def _locked(f: Fetched) -> Iterator[Sample]:
    yield (), int(f.image.task_id is not None)


def _lock_age(f: Fetched) -> Iterator[Sample]:
    if f.image.task_id is not None and f.lock_started is not None:
        yield (), max(0.0, f.now - f.lock_started)


def _task_info(f: Fetched) -> Iterator[Sample]:
    if f.image.task_id is not None:
        task = f.task
        yield (
            (
                ("task_id", f.image.task_id),
                ("task_type", (task.task_type or "") if task else ""),
                ("task_state", task.state if task else ""),
                ("task_error", truncate((task.error or "") if task else "")),
            ),
            1,
        )


def _lock_task_finished(f: Fetched) -> Iterator[Sample]:
    if f.image.task_id is not None and f.task is not None and f.task.finished_on is not None:
        yield (), f.task.finished_on.timestamp()


def _status_since(f: Fetched) -> Iterator[Sample]:
    if f.status_since is not None:
        yield (), f.status_since


def _created(f: Fetched) -> Iterator[Sample]:
    yield (), f.image.created_at.timestamp()


def _updated(f: Fetched) -> Iterator[Sample]:
    if f.image.updated_at is not None:
        yield (), f.image.updated_at.timestamp()


def _age(f: Fetched) -> Iterator[Sample]:
    yield (), max(0.0, f.now - f.image.created_at.timestamp())


def _tags(f: Fetched) -> Iterator[Sample]:
    # a key given twice is one tag, the last value winning as in a JSON object: no duplicate series
    for tag in {tag.key: tag for tag in f.image.tags or ()}.values():
        if f.tag_keys is not None and tag.key not in f.tag_keys:
            continue
        yield (("key", tag.key), ("value", tag.value), ("read_only", str(tag.read_only).lower())), 1


def _up(h: Health) -> Iterator[Sample]:
    yield (), int(h.up)


def _last_success(h: Health) -> Iterator[Sample]:
    if h.last_success is not None:
        yield (), h.last_success


def _errors(h: Health) -> Iterator[Sample]:
    for reason, count in sorted(h.errors.items()):
        yield (("reason", reason),), count


def _last_error(h: Health) -> Iterator[Sample]:
    if not h.up and h.last_error is not None:
        yield (("reason", h.last_error),), 1


def _clusters(count: int | None) -> Iterator[Sample]:
    if count is not None:
        yield (), count


VALUE_FAMILIES: Final[tuple[Family[Fetched], ...]] = (
    Family(
        "gcore_gpu_image_info", "gauge", "Descriptive attributes of a GPU image, always 1.", _info
    ),
    Family(
        "gcore_gpu_image_status",
        "gauge",
        "Image status: 1 for the current one, 0 for the other known statuses.",
        _status,
    ),
    Family(
        "gcore_gpu_image_size_bytes",
        "gauge",
        "Image size; absent while Gcore reports none.",
        _size,
    ),
    Family(
        "gcore_gpu_image_min_disk_bytes",
        "gauge",
        "Minimal boot volume size for the image.",
        _min_disk,
    ),
    Family(
        "gcore_gpu_image_min_ram_bytes", "gauge", "Minimal RAM needed to boot the image.", _min_ram
    ),
    Family("gcore_gpu_image_locked", "gauge", "1 while a task holds a lock on the image.", _locked),
    Family(
        "gcore_gpu_image_lock_age_seconds",
        "gauge",
        "How long the image has been locked: since the task was created, else since first seen.",
        _lock_age,
    ),
    Family(
        "gcore_gpu_image_task_info",
        "gauge",
        "The task holding the image's lock (empty labels where the Tasks API gave no answer).",
        _task_info,
    ),
    Family(
        "gcore_gpu_image_created_timestamp_seconds",
        "gauge",
        "When the image was created.",
        _created,
    ),
    Family(
        "gcore_gpu_image_updated_timestamp_seconds",
        "gauge",
        "When the image last changed.",
        _updated,
    ),
    Family("gcore_gpu_image_age_seconds", "gauge", "Time since the image was created.", _age),
    Family(
        "gcore_gpu_image_tag_info", "gauge", "One series per tag of the image, always 1.", _tags
    ),
    Family(
        "gcore_gpu_image_lock_task_finished_timestamp_seconds",
        "gauge",
        "When the task holding the image's lock finished: an ended task that still holds the "
        "lock is a stuck lock.",
        _lock_task_finished,
    ),
    Family(
        "gcore_gpu_image_status_since_timestamp_seconds",
        "gauge",
        "When the image entered its current status: updated_at when first seen, then the time "
        "the exporter first saw the new status.",
        _status_since,
    ),
)
HEALTH_FAMILIES: Final[tuple[Family[Health], ...]] = (
    Family("gcore_gpu_image_up", "gauge", "Whether the last fetch of this image succeeded.", _up),
    Family(
        "gcore_gpu_image_last_success_timestamp_seconds",
        "gauge",
        "When this image was last fetched successfully.",
        _last_success,
    ),
    Family(
        "gcore_gpu_image_fetch_errors_total",
        "counter",
        "Failed fetches of this image by reason (a series appears with its first failure).",
        _errors,
    ),
    Family(
        "gcore_gpu_image_last_error_info",
        "gauge",
        "Reason of the failure of the last fetch; present only while up is 0.",
        _last_error,
    ),
)
USAGE_FAMILIES: Final[tuple[Family[int | None], ...]] = (
    Family(
        "gcore_gpu_image_clusters",
        "gauge",
        "GPU clusters whose servers boot from the image; 0 for a watched image that none uses, "
        "absent while the clusters of its project and region were never listed.",
        _clusters,
    ),
)
"""What uses the image: rendered when the cluster poll changes a count, never per publication."""
AnyFamily = Family[Fetched] | Family[Health] | Family[int | None]
FAMILIES: Final[tuple[AnyFamily, ...]] = VALUE_FAMILIES + HEALTH_FAMILIES + USAGE_FAMILIES
NO_VALUES: Final = (b"",) * len(VALUE_FAMILIES)


@dataclass(frozen=True, slots=True)
class Shown:
    """Which families an image renders (masks indexed like `VALUE_FAMILIES`, `HEALTH_FAMILIES`
    and `USAGE_FAMILIES`) and which tag keys (None: every key): a `selection.Selection` resolved
    once, not per image."""

    values: tuple[bool, ...] = (True,) * len(VALUE_FAMILIES)
    health: tuple[bool, ...] = (True,) * len(HEALTH_FAMILIES)
    tag_keys: frozenset[str] | None = None
    usage: tuple[bool, ...] = (True,) * len(USAGE_FAMILIES)

    @property
    def hidden(self) -> frozenset[int]:
        """Indices in `FAMILIES` of the families not exported: their headers are not written."""
        masks = self.values + self.health + self.usage
        return frozenset(i for i, shown in enumerate(masks) if not shown)


SHOW_ALL: Final = Shown()


def truncate(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """`text` cut to `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


_EXACT: Final = 2**53  # integers up to here are exact in float64 and written as integers


def format_value(value: float) -> str | None:
    """`value` as Prometheus parses it (a float64); None if no finite float64 holds it."""
    if type(value) is int and -_EXACT < value < _EXACT:
        return str(value)
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number):
        return None
    if number.is_integer() and abs(number) < _EXACT:
        return str(int(number))
    return repr(number)


def _labels(pairs: Labels) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)


def identity(key: ImageKey) -> str:
    """The labels every series of the image carries."""
    scope = key.scope
    return _labels(
        (
            ("project_id", str(scope.project_id)),
            ("region_id", str(scope.region_id)),
            ("image_id", key.image_id),
        )
    )


def render_values(
    key: ImageKey,
    image: Image,
    shown: Shown = SHOW_ALL,
    *,
    now: float,
    task: Task | None = None,
    lock_started: float | None = None,
    status_since: float | None = None,
) -> tuple[bytes, ...]:
    """What a successful fetch knows, one chunk per family of `VALUE_FAMILIES` (empty if hidden)."""
    fetched = Fetched(image, now, task, lock_started, key.scope.kind, status_since, shown.tag_keys)
    ident = identity(key)
    return tuple(
        family.render(ident, fetched) if on else b""
        for family, on in zip(VALUE_FAMILIES, shown.values, strict=True)
    )


def render_health(
    key: ImageKey,
    *,
    up: bool,
    last_success: float | None = None,
    errors: Mapping[Reason, int] | None = None,
    last_error: Reason | None = None,
    shown: Shown = SHOW_ALL,
) -> tuple[bytes, ...]:
    """How fetching the image goes, one chunk per family of `HEALTH_FAMILIES` (empty if hidden)."""
    health = Health(up, last_success, errors or {}, last_error)
    ident = identity(key)
    return tuple(
        family.render(ident, health) if on else b""
        for family, on in zip(HEALTH_FAMILIES, shown.health, strict=True)
    )


def render_usage(key: ImageKey, clusters: int | None, shown: Shown = SHOW_ALL) -> tuple[bytes, ...]:
    """What uses the image (None: unknown), one chunk per family of `USAGE_FAMILIES`."""
    ident = identity(key)
    return tuple(
        family.render(ident, clusters) if on else b""
        for family, on in zip(USAGE_FAMILIES, shown.usage, strict=True)
    )
