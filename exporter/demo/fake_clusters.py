"""The fake API's GPU clusters: both listings, paged, with bare metal's `managed_by` filter.

`GET /cloud/v3/gpu/{kind}/{project_id}/{region_id}/clusters` as the SDK describes it: bare metal
lists only `managed_by=user` clusters unless asked for `k8s` too (the parameter repeats); virtual
clusters name their image on the boot volume of `servers_settings`, not at the top.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import uuid4

from aiohttp import web

CLUSTERS_PATH = "/cloud/v3/gpu/{kind:virtual|baremetal}/{project_id}/{region_id}/clusters"
ClusterScope = tuple[str, int, int]  # kind, project_id, region_id


def _cluster(cluster_id: str, name: str, status: str, servers: int) -> dict[str, Any]:
    return {
        "id": cluster_id,
        "name": name,
        "status": status,
        "created_at": "2026-01-07T10:00:00Z",
        "updated_at": None,
        "flavor": "bm3-ai-1xlarge-h100-80-8",
        "has_pending_changes": False,
        "servers_count": servers,
        "servers_ids": [f"{cluster_id[:8]}-server-{n}" for n in range(servers)],
        "tags": [],
    }


def make_baremetal_cluster(
    cluster_id: str,
    name: str,
    image_id: str,
    *,
    status: str = "active",
    servers: int = 2,
    managed_by: str = "user",
    **fields: Any,
) -> dict[str, Any]:
    """A bare-metal GPU cluster as the API lists it; `fields` override or add keys."""
    cluster = _cluster(cluster_id, name, status, servers)
    cluster.update(
        image_id=image_id,
        managed_by=managed_by,
        servers_settings={"file_shares": [], "interfaces": [], "security_groups": []},
    )
    cluster.update(fields)
    return cluster


def make_virtual_cluster(
    cluster_id: str,
    name: str,
    image_id: str | None,
    *,
    status: str = "active",
    servers: int = 2,
    **fields: Any,
) -> dict[str, Any]:
    """A virtual GPU cluster booting from `image_id` (None: a boot volume without image); a data
    volume comes first, as the API may list it."""
    cluster = _cluster(cluster_id, name, status, servers)
    volumes: list[dict[str, Any]] = [
        {"boot_index": None, "image_id": None, "name": "data", "size": 500, "type": "ssd_hiiops"},
        {"boot_index": 0, "image_id": image_id, "name": "boot", "size": 100, "type": "ssd_hiiops"},
    ]
    for volume in volumes:
        volume.update(delete_on_termination=True, tags=[])
    cluster["servers_settings"] = {
        "file_shares": [],
        "interfaces": [],
        "security_groups": [],
        "volumes": volumes,
    }
    cluster.update(fields)
    return cluster


@dataclass
class ClusterBook:
    """The clusters of every scope; mutate it between requests, the server reads it live."""

    clusters: dict[ClusterScope, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def put(self, kind: str, project_id: int, region_id: int, cluster: dict[str, Any]) -> None:
        self.clusters.setdefault((kind, project_id, region_id), {})[cluster["id"]] = cluster

    def update(
        self, kind: str, project_id: int, region_id: int, cluster_id: str, **fields: Any
    ) -> None:
        self.clusters[(kind, project_id, region_id)][cluster_id].update(fields)

    def remove(self, kind: str, project_id: int, region_id: int, cluster_id: str) -> None:
        del self.clusters[(kind, project_id, region_id)][cluster_id]

    def handler(self, fake: Served) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The listing's request handler: paged like every list of `fake` (`max_page`), and
        404 for a (kind, region) in its `unserved`, as the images answer."""

        async def list_clusters(request: web.Request) -> web.Response:
            kind = request.match_info["kind"]
            try:
                project_id = int(request.match_info["project_id"])
                region_id = int(request.match_info["region_id"])
                limit = int(request.query.get("limit", "10"))
                offset = int(request.query.get("offset", "0"))
            except ValueError:
                return _error(400, "BadRequestError", "invalid path or paging")
            if (kind, region_id) in fake.unserved:
                return _error(404, "NotFoundError", "Project or region not found")
            items = list(self.clusters.get((kind, project_id, region_id), {}).values())
            if kind == "baremetal":
                managed = set(request.query.getall("managed_by", [])) or {"user"}
                items = [c for c in items if c.get("managed_by", "user") in managed]
            page = items[max(offset, 0) : max(offset, 0) + max(1, min(limit, fake.max_page))]
            return web.json_response({"count": len(items), "results": page})

        return list_clusters


class Served(Protocol):
    """What the cluster listing reads of the fake API it is part of."""

    max_page: int
    unserved: set[tuple[str, int]]


def _error(status: int, exception_class: str, message: str) -> web.Response:
    body = {"exception_class": exception_class, "message": message, "request_id": str(uuid4())}
    return web.json_response(body, status=status)
