"""Which families are exported, and which tag keys `gcore_gpu_image_tag_info` keeps.

As kube-state-metrics' `--metric-allowlist`/`--metric-denylist`: regular expressions over family
names, each matched against the whole name. A family left out is never rendered: its images' lines
are not built, its header not written, and collectors of it in the registry are left out of the
exposition. The exporter's own families (`gcore_exporter_*`, `process_*`) are not filtered: they
are few, bounded, and what the shipped alerts and dashboard read to tell whether it works.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.registry import Collector

from exporter.metrics.families import HEALTH_FAMILIES, USAGE_FAMILIES, VALUE_FAMILIES, Shown

FILTERED_PREFIX: Final = "gcore_gpu_"
"""Families the lists apply to: what the exporter reports of Gcore, not of itself."""


@dataclass(frozen=True, slots=True)
class Selection:
    """`allow` or `deny` (never both: settings refuse it) and the tag keys kept (None: all)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    tag_keys: frozenset[str] | None = None

    def exports(self, name: str) -> bool:
        """Whether family `name` (as exposed, counters with `_total`) is exported."""
        if not name.startswith(FILTERED_PREFIX):
            return True
        if self.allow:
            return _matches(self.allow, name)
        return not _matches(self.deny, name)

    def mask(self, names: Iterable[str]) -> tuple[bool, ...]:
        """`exports` for each of `names`, computed once: rendering reads it per image."""
        return tuple(self.exports(name) for name in names)

    def shown(self) -> Shown:
        """What each image renders, resolved once for the image store."""
        return Shown(
            values=self.mask(family.name for family in VALUE_FAMILIES),
            health=self.mask(family.name for family in HEALTH_FAMILIES),
            tag_keys=self.tag_keys,
            usage=self.mask(family.name for family in USAGE_FAMILIES),
        )


EVERY_FAMILY: Final = Selection()


def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in patterns)


_SUFFIXES: Final = {"counter": "_total", "info": "_info"}  # prometheus_client names them without


class _Selected(Collector):
    def __init__(self, registry: CollectorRegistry, selection: Selection) -> None:
        self._registry = registry
        self._selection = selection

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if self._selection.exports(metric.name + _SUFFIXES.get(metric.type, "")):
                yield metric


def selected_registry(registry: CollectorRegistry, selection: Selection) -> CollectorRegistry:
    """The families of `registry` that `selection` exports (`registry` itself if all are)."""
    if not selection.allow and not selection.deny:
        return registry
    selected = CollectorRegistry(auto_describe=False)
    selected.register(_Selected(registry, selection))
    return selected
