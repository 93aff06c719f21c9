"""Typed views of what Gcore sends: lenient about additions, strict about what we rely on.

Validation is also where untrusted text is made safe once per fetch: ids and tags lose lone
surrogates (which no UTF-8 exposition can carry), so two ids that would render alike are one id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)


def _assume_utc(value: datetime) -> datetime:
    # Gcore mostly omits the zone; its timestamps are UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def clean_text(value: str) -> str:
    """`value` with lone surrogates (JSON allows `\\ud800`) replaced by `?`, as rendering does."""
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def _unknown_if_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A timestamp that is not one (`""`, junk) is unknown, not a reason to drop the answer."""
    try:
        return handler(value)
    except ValidationError:
        return None


UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]
Text = Annotated[str, AfterValidator(clean_text)]


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


class ImagePage(_Model):
    """One page of the list endpoint; items stay raw so one bad image cannot sink the page."""

    count: int
    results: tuple[object, ...]


class Task(_Model):
    id: str
    state: str
    task_type: str | None = None
    # a plain string in the SDK: "" or an unparseable value means unknown
    created_on: Annotated[UtcDatetime | None, WrapValidator(_unknown_if_invalid)] = None
