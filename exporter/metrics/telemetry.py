"""The exporter's own instruments, in a registry of their own (never the global one)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from exporter import __version__
from exporter.identity import revision
from exporter.metrics.families import CACHED_HELP
from exporter.sharding import EVERYTHING, Shard
from exporter.vocabulary import Endpoint, Reason

REQUEST_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# `_created` series double every counter and histogram for no use in alerting or dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass
class Telemetry:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )
    shard: Shard = EVERYTHING

    def __post_init__(self) -> None:
        r = self.registry
        Gauge(
            "gcore_exporter_build_info",
            "Version, source revision and Python version of the running exporter.",
            ["version", "revision", "python_version"],
            registry=r,
        ).labels(__version__, revision(), platform.python_version()).set(1)
        ProcessCollector(registry=r)  # process_*: memory, CPU, open files, start time
        Gauge(
            "gcore_exporter_shard_ordinal",
            "Which shard of the images this exporter exports (0 when not sharded).",
            registry=r,
        ).set(self.shard.ordinal)
        Gauge(
            "gcore_exporter_total_shards",
            "How many exporters share the images by a hash of their id (1 when not sharded).",
            registry=r,
        ).set(self.shard.total)
        self.api_requests = Counter(
            "gcore_exporter_api_requests",
            CACHED_HELP + "HTTP requests sent to the Gcore API, by endpoint and status code "
            "(timeout and connection when no response came back).",
            ["endpoint", "code"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "gcore_exporter_api_request_duration_seconds",
            CACHED_HELP + "Latency of Gcore API requests, by endpoint.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.api_retries = Counter(
            "gcore_exporter_api_retries",
            CACHED_HELP + "Gcore API requests retried after a retryable failure, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        for endpoint in get_args(Endpoint):  # 0 from the start, so rate() sees the first retry
            self.api_retries.labels(endpoint)
        self.rate_limit_pauses = Counter(
            "gcore_exporter_rate_limit_pauses",
            CACHED_HELP + "Times a 429 from Gcore paused every request to the API.",
            registry=r,
        )
        self.rate_limit_paused = Gauge(
            "gcore_exporter_rate_limit_paused",
            CACHED_HELP + "1 while the exporter holds all API requests back after a 429.",
            registry=r,
        )
        self.task_fetch_errors = Counter(
            "gcore_exporter_task_fetch_errors",
            CACHED_HELP + "Failed lookups of the task that locks an image, by reason "
            "(the image itself is still reported).",
            ["reason"],
            registry=r,
        )
        for reason in get_args(Reason):
            self.task_fetch_errors.labels(reason)
        self.polls = Counter(
            "gcore_exporter_polls",
            CACHED_HELP + "Completed poll rounds.",
            registry=r,
        )
        self.poll_duration = Gauge(
            "gcore_exporter_poll_duration_seconds",
            CACHED_HELP + "Wall time of the last completed poll round.",
            registry=r,
        )
        self.last_poll = Gauge(
            "gcore_exporter_last_poll_timestamp_seconds",
            CACHED_HELP + "Unix time at which the last poll round completed.",
            registry=r,
        )
        self.images = Gauge(
            "gcore_exporter_images",
            CACHED_HELP + "Images currently monitored (configured and discovered).",
            registry=r,
        )
        self.discovery_up = Gauge(
            "gcore_exporter_discovery_up",
            CACHED_HELP + "Whether the last listing succeeded, by endpoint: a project/region's "
            "images of one GPU kind, or (with empty ids and kind) projects, regions and tasks.",
            ["project_id", "region_id", "kind", "endpoint"],
            registry=r,
        )
        self.scopes = Gauge(
            "gcore_exporter_scopes",
            CACHED_HELP + "Watched project/regions by the state of their image listing: ok, "
            "failing, or unavailable (a discovered region without that GPU service).",
            ["state"],
            registry=r,
        )
        self.discovery_last_success = Gauge(
            "gcore_exporter_discovery_last_success_timestamp_seconds",
            CACHED_HELP + "Unix time of the last successful listing, labelled as discovery_up"
            " (absent until one succeeds).",
            ["project_id", "region_id", "kind", "endpoint"],
            registry=r,
        )

        self.scope_cadence = Gauge(
            "gcore_exporter_scope_cadence",
            CACHED_HELP + "Watched project/regions by how often their images are listed: "
            "images and failing every round, empty and unavailable at the discovery interval "
            "(an image task in an empty one's project and region lists it at once).",
            ["cadence"],
            registry=r,
        )
        self.scope_listing_interval = Gauge(
            "gcore_exporter_scope_listing_interval_seconds",
            CACHED_HELP + "Seconds between two listings of a scope's images, by cadence.",
            ["cadence"],
            registry=r,
        )
        self.invalid_items = Counter(
            "gcore_exporter_invalid_items",
            CACHED_HELP + "Items of a Gcore listing skipped because they failed validation, "
            "by endpoint (images, projects, regions, tasks); the rest of the listing is used.",
            ["endpoint"],
            registry=r,
        )
        for endpoint in ("images", "projects", "regions", "tasks"):
            self.invalid_items.labels(endpoint)

    def request_done(self, endpoint: Endpoint, code: str, seconds: float) -> None:
        self.api_requests.labels(endpoint, code).inc()
        self.api_request_duration.labels(endpoint).observe(seconds)

    def request_retried(self, endpoint: Endpoint) -> None:
        self.api_retries.labels(endpoint).inc()

    def rate_limit_pause_started(self) -> None:
        self.rate_limit_pauses.inc()

    def item_invalid(self, endpoint: Endpoint, item_id: str | None, problem: str) -> None:
        """A listing's item that failed validation (it is logged where it is used)."""
        self.invalid_items.labels(endpoint).inc()
