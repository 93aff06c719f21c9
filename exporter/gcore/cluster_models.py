"""GPU clusters as the exporter reads them: which image each boots from, and little else.

Lenient on purpose: the SDK requires a dozen fields (`flavor`, `servers_ids`, `tags`, ...) that the
exporter never reads, and a cluster dropped for one of them would make its image look unused,
which is the one wrong answer that costs data ("safe to delete"). Only `id` is required; a field
that is missing or of the wrong type is None. Fields verified against gcore-python's
`types/cloud/gpu_baremetal/gpu_baremetal_cluster.py` and `types/cloud/gpu_virtual/
gpu_virtual_cluster.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from exporter.gcore.models import MaybeInt, MaybeText, Text, clean_text


def boot_image(settings: Any) -> str | None:
    """The image of a virtual cluster's boot volume (`boot_index` 0, wherever it is listed),
    from `servers_settings`; None when it has none (a boot from a volume or snapshot)."""
    volumes = settings.get("volumes") if isinstance(settings, dict) else None
    for volume in volumes if isinstance(volumes, list) else ():
        index = volume.get("boot_index") if isinstance(volume, dict) else None
        if type(index) is int and index == 0:
            image = volume.get("image_id")
            return clean_text(image) if isinstance(image, str) and image else None
    return None


class GpuCluster(BaseModel):
    """A cluster of either kind: bare metal names `image_id`; virtual ones get it from their
    boot volume (`servers_settings`), which the validator reads into `image_id`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Text
    name: MaybeText = None
    status: MaybeText = None
    image_id: MaybeText = None
    servers_count: Annotated[MaybeInt, BeforeValidator(lambda v: None if v is True else v)] = None
    managed_by: MaybeText = None

    @classmethod
    def virtual(cls, raw: Any) -> GpuCluster:
        """A virtual cluster: its image is that of its boot volume, never a top-level field."""
        if isinstance(raw, dict):
            raw = {**raw, "image_id": boot_image(raw.get("servers_settings"))}
        return cls.model_validate(raw)
