"""Typed views of what Gcore sends: lenient about additions, strict about what we rely on.

Validation is also where untrusted text is made safe once per fetch: ids and tags lose lone
surrogates (which no UTF-8 exposition can carry), so two ids that would render alike are one id.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
)

T = TypeVar("T")


def _assume_utc(value: datetime) -> datetime:
    # Gcore mostly omits the zone; its timestamps are UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def clean_text(value: str) -> str:
    """`value` with lone surrogates (JSON allows `\\ud800`) replaced by `?`, as rendering does: the
    one helper for text from Gcore that becomes a label, where one bad character fails a scrape."""
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]
Text = Annotated[str, AfterValidator(clean_text)]


def _or_none(kind: type[T], then: Callable[[T], T] = lambda value: value) -> BeforeValidator:
    """Parse as `kind`, or None: for fields the SDK types loosely (task timestamps are plain
    strings there, so `""` and odd values arrive), which must cost the field, not the answer."""
    adapter = TypeAdapter(kind)

    def parse(value: Any) -> T | None:
        if value is None or value == "":
            return None
        try:
            return then(adapter.validate_python(value))
        except ValidationError:
            return None

    return BeforeValidator(parse)


MaybeUtc = Annotated[datetime | None, _or_none(datetime, _assume_utc)]
MaybeInt = Annotated[int | None, _or_none(int)]
MaybeText = Annotated[str | None, _or_none(str, clean_text)]
MaybeBool = Annotated[bool | None, _or_none(bool)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Tag(_Model):
    key: Text
    value: Text
    read_only: bool = False


class Image(_Model):
    id: Text
    name: str
    status: str
    created_at: UtcDatetime
    updated_at: UtcDatetime | None = None  # required by the SDK, nullable in older clients
    size: int | None = None
    min_disk: int | None = None
    min_ram: int | None = None
    task_id: Text | None = None
    tags: tuple[Tag, ...] | None = None
    visibility: str | None = None
    ssh_key: str | None = None
    architecture: str | None = None
    os_distro: str | None = None
    os_type: str | None = None
    os_version: str | None = None
    disk_format: str | None = None
    hw_firmware_type: str | None = None
    gpu_driver: str | None = None
    gpu_driver_type: str | None = None
    gpu_driver_version: str | None = None
    cuda_toolkit_version: str | None = None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


class CreatedResources(_Model):
    images: Annotated[tuple[str, ...], BeforeValidator(_strings)] = ()


class Task(_Model):
    id: str
    state: str
    task_type: MaybeText = None
    created_on: MaybeUtc = None
    updated_on: MaybeUtc = None
    finished_on: MaybeUtc = None
    error: MaybeText = None
    acknowledged_at: MaybeUtc = None  # someone marked the task as seen in Gcore
    project_id: MaybeInt = None
    region_id: MaybeInt = None
    created_resources: Annotated[CreatedResources | None, _or_none(CreatedResources)] = None


class Listing(_Model):
    """Any `{count, results}` answer (a page of images, projects, regions, tasks); items stay raw so
    that each is validated on its own: one bad item cannot sink the page."""

    count: int
    results: tuple[object, ...]


class Project(_Model):
    id: int
    name: str
    state: str | None = None
    is_default: bool = False


class Region(_Model):
    """A region; its capability flags are hints only (their meaning is not documented, see
    docs/gcore-api.md): discovery probes every ACTIVE region's listings instead."""

    id: int
    display_name: str
    state: str
    has_ai_gpu: MaybeBool = None
    has_baremetal: MaybeBool = None
    slug: MaybeText = None
    zone: MaybeText = None
    country: MaybeText = None
