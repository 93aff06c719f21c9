"""Words every layer shares: what is watched (scopes, image keys, targets), which endpoint was
called and why a fetch failed.

Plain data and one exception, no I/O, and nothing of the exporter imported: settings, the Gcore
client, polling and the metrics all import it, so the words they share belong to none of them.
A name that one layer owns and others use is imported from its owner (the web config raises
`config.settings.ConfigError`, polling's collectors take `CACHED_HELP` from `metrics.families`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

Endpoint = Literal["images", "image", "task", "projects", "regions", "tasks", "clusters"]
"""The Gcore API endpoints the client calls: a scope's image list, one image, one task, the
projects, the regions, the Tasks list and a scope's GPU clusters; the `endpoint` label of the API
request metrics."""

Reason = Literal[
    "not_found",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "invalid_response",
]

Kind = Literal["virtual", "baremetal"]
"""Which GPU image service: the word in the API path `/cloud/v3/gpu/{kind}/...`."""


_UUID: Final = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", re.IGNORECASE)


def as_gcore_writes(image_id: str) -> str:
    """A UUID in lower case, as Gcore sends image ids: one typed in upper case (in a target, or
    named so by a cluster) is the same image, not a mismatch forever. Other ids are left as is."""
    return image_id.lower() if _UUID.match(image_id) else image_id


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """A project/region pair of one GPU service: the unit of discovery and of Gcore's URL space."""

    project_id: int
    region_id: int
    kind: Kind = "virtual"

    def spec(self) -> str:
        """The scope as a target spec: `PROJECT/REGION`, after `baremetal:` for bare metal."""
        return _spec(self.project_id, self.region_id, self.kind)


@dataclass(frozen=True, slots=True, order=True)
class ImageKey:
    scope: Scope
    image_id: str


@dataclass(frozen=True, slots=True)
class Wildcard:
    """`*`, `PROJECT/*` or `*/REGION`: scopes that discovery finds (None is every one)."""

    project_id: int | None
    region_id: int | None
    kind: Kind = "virtual"

    def spec(self) -> str:
        return _spec(self.project_id, self.region_id, self.kind)


@dataclass(frozen=True, slots=True)
class Targets:
    """What to poll. `scopes` are configured, `discovered` come from expanding `wildcards`."""

    images: tuple[ImageKey, ...]
    scopes: tuple[Scope, ...]
    wildcards: tuple[Wildcard, ...] = ()
    discovered: tuple[Scope, ...] = ()


def _spec(project_id: int | None, region_id: int | None, kind: Kind) -> str:
    prefix = "baremetal:" if kind == "baremetal" else ""
    if project_id is None and region_id is None:
        return f"{prefix}*"
    project = "*" if project_id is None else project_id
    region = "*" if region_id is None else region_id
    return f"{prefix}{project}/{region}"


class FetchError(Exception):
    """A failed API call, safe to log and show: no key, no request headers."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.status = status
        self.request_id = request_id

    def log_fields(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "status": self.status,
            "request_id": self.request_id,
            "message": self.message,
        }


YIELD_EVERY: Final = 250
"""Items of an answer validated between two yields to the event loop (rendering images yields
every `polling.fetcher.RENDER_EVERY`)."""
