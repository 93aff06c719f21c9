"""Typed views of what Gcore sends: lenient about additions, strict about what we rely on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


def _assume_utc(value: datetime) -> datetime:
    # Gcore mostly omits the zone; its timestamps are UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Tag(_Model):
    key: str
    value: str
    read_only: bool = False


class Image(_Model):
    id: str
    name: str
    status: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    size: int | None = None
    min_disk: int | None = None
    min_ram: int | None = None
    task_id: str | None = None
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


class ImagePage(_Model):
    """One page of the list endpoint; items stay raw so one bad image cannot sink the page."""

    count: int
    results: tuple[object, ...]


class Task(_Model):
    id: str
    state: str
    task_type: str | None = None
    created_on: UtcDatetime | None = None
