#!/usr/bin/env python3
"""Render the alert rules of the Gcore GPU image exporter (stdlib and PyYAML only).

It prints a Prometheus rule file to stdout, or with `--format prometheusrule` a Prometheus Operator
PrometheusRule; `rules.yaml` beside this file and `../prometheus-operator/prometheusrule.yaml` are
its output with the defaults. Mixin style, it takes the thresholds (`--set NAME=DURATION`,
`--scale FACTOR`; defaults in `exporter/alerting.py`, which the dashboard shares), a selector of
the exporter's series (`--selector`, or `--job`) and a cluster label (`--cluster-label`). From
Python: `render({"lock_age": "30s"})` or `render(scaled(1 / 60), cluster_label="cluster")`. See
docs/deploy.md.

The alerts are data (`ALERTS`): every field is a Prometheus text in which only `%(name)s` is filled
in (a threshold, or a name of `_context`), so Go templates read as Prometheus sees them. Every
expression aggregates away the labels that tell the exporter's replicas apart (`REPLICA_LABELS`),
with `max without`, which keeps every other label: N replicas page once.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

# Run as a script, only this folder is on sys.path: make the repository's `exporter` importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from exporter.alerting import (  # noqa: E402
    DEFAULT_JOB,
    DEFAULT_SELECTOR,
    DEFAULTS,
    RUNBOOK_URL,
    TRANSITIONAL_STATUSES,
    Config,
    add_options,
    check_label_name,
    config_from,
    format_duration,
    parse_duration,
    scaled,
)

__all__ = [
    "ALERTS",
    "DEFAULTS",
    "DEFAULT_JOB",
    "DEFAULT_RUNBOOK",
    "DEFAULT_SELECTOR",
    "PIPELINE_ALERTS",
    "REPLICA_LABELS",
    "Alert",
    "format_duration",
    "groups",
    "main",
    "parse_duration",
    "render",
    "render_prometheus_rule",
    "scaled",
]

DEFAULT_RUNBOOK = RUNBOOK_URL
GROUP = "gcore-gpu-image-exporter"
NAME_LOOKBACK = "1d"
# What tells two replicas of the exporter apart: the scrape's instance, and the pod and node of
# the Prometheus Operator's and the prometheus Helm chart's Kubernetes discovery.
REPLICA_LABELS = ("instance", "pod", "node")


class Alert(NamedTuple):
    """One alerting rule. `for_` is a duration (usually `%(..._for)s`); empty or 0s means none.
    `summary` is static text; `description` may use the variables of `_lookups` (`$image`,
    `$task`, `$task_error`, `$reason`, `$error`, `$clusters`, `$imagestate`, `$project`,
    `$region`). `escalate`: the rule is rendered twice, at `severity` for an image no GPU cluster
    boots from and critical for one that clusters boot from (`gcore_gpu_image_clusters` > 0)."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    fires_when: str = ""  # for docs/deploy.md's alert table (docs/generate.py), in words
    labels: str = ""  # ... and the labels it adds to the scrape's job ("" when none)
    escalate: bool = False


ALERTS: tuple[Alert, ...] = (
    Alert(
        "GcoreGpuImageNotActive",
        expr="max without (%(replicas)s) (\n"
        '  gcore_gpu_image_status{%(sel)s, status!~"%(active_or_transitional)s"}\n) == 1',
        for_="%(failed_for)s",
        severity="critical",
        summary="A GPU image is in a failed status.",
        description="GPU image {{ $image }} %(where)s has been in the failed status"
        ' "{{ $labels.status }}" for more than %(failed_for)s; no instance can be created from it.'
        "{{ $clusters }}",
        fires_when="failed status (`killed`, `deactivated`, `deleted`, `pending_delete`, unknown) "
        "for `failed_for`",
        labels="image, `status`",
    ),
    Alert(
        # The time in status comes from the exporter (`status_since`, from Gcore's updated_at), so
        # neither a restart of the exporter nor one of Prometheus starts the hour again; the
        # short `for` only rides out flapping.
        "GcoreGpuImageNotActive",
        expr="max without (%(replicas)s) (\n"
        "  (time() - gcore_gpu_image_status_since_timestamp_seconds{%(sel)s})\n"
        "  * ignoring (status) group_left (status)\n"
        '  (gcore_gpu_image_status{%(sel)s, status=~"%(transitional)s"} == 1)\n'
        ") > %(transitional_seconds)s",
        for_="%(transitional_pending_for)s",
        severity="warning",
        summary="A GPU image is stuck in a transitional status.",
        description="GPU image {{ $image }} %(where)s has been in the transitional status"
        ' "{{ $labels.status }}" for {{ $value | humanizeDuration }}'
        " (threshold %(transitional_for)s).{{ $clusters }}",
        fires_when="time in one transitional status (`queued`, `saving`, `uploading`, "
        "`importing`, from `gcore_gpu_image_status_since_timestamp_seconds`) above "
        "`transitional_for`, for `transitional_pending_for`; critical when GPU clusters boot "
        "from the image",
        labels="image, `status`",
        escalate=True,
    ),
    Alert(
        "GcoreGpuImageLockedTooLong",
        expr="max without (%(replicas)s) (gcore_gpu_image_lock_age_seconds{%(sel)s})"
        " > %(lock_age_seconds)s",
        for_="%(lock_age_for)s",
        severity="warning",
        summary="A task has locked a GPU image for too long.",
        description="GPU image {{ $image }} %(where)s has been locked by {{ $task }} for"
        " {{ $value | humanizeDuration }} (threshold %(lock_age)s).{{ $clusters }}",
        fires_when="lock age above `lock_age`, for `lock_age_for`; critical when GPU clusters "
        "boot from the image",
        labels="image",
        escalate=True,
    ),
    Alert(
        "GcoreGpuImageLockedTooLong",
        # Without task_error: error text is for annotations, never an alert's labels (a new
        # wording of the same error would make a new alert).
        expr="max without (%(replicas)s, task_error) (\n"
        '  gcore_gpu_image_task_info{%(sel)s, task_state="ERROR"}\n) == 1',
        for_="%(lock_error_for)s",
        severity="critical",
        summary="The task that locks a GPU image failed.",
        description="Task {{ $labels.task_id }} ({{ $labels.task_type }}) that locks GPU image"
        " {{ $image }} %(where)s has been in state ERROR for more than %(lock_error_for)s"
        " (error: {{ $task_error }});"
        " the image stays locked until the task is cleaned up.{{ $clusters }}",
        fires_when="locking task in state `ERROR` for `lock_error_for`",
        labels="image, `task_id`, `task_type`, `task_state` (the error text is in the description)",
    ),
    Alert(
        # A task in ERROR is GcoreGpuImageLockedTooLong's critical case already.
        "GcoreGpuImageLockStuck",
        expr="time() - max without (%(replicas)s) ("
        "gcore_gpu_image_lock_task_finished_timestamp_seconds{%(sel)s}) > %(stuck_lock_seconds)s\n"
        "unless on (%(image_key)s)\n"
        'max without (%(replicas)s) (gcore_gpu_image_task_info{%(sel)s, task_state="ERROR"})',
        for_="%(lock_age_for)s",
        severity="warning",
        summary="A GPU image stays locked after its task finished.",
        description="GPU image {{ $image }} %(where)s is still locked by {{ $task }}, which"
        " finished {{ $value | humanizeDuration }} ago (threshold %(stuck_lock_age)s): the lock"
        " is stuck, and the image cannot be changed or deleted until Gcore releases it.",
        fires_when="the locking task finished more than `stuck_lock_age` ago and the lock stays "
        "(not for a task in `ERROR`), for `lock_age_for`",
        labels="image",
    ),
    Alert(
        # One alert per task, while the exporter exports it: for its failed-task window.
        "GcoreGpuImageTaskFailed",
        expr="max without (%(replicas)s) (gcore_gpu_image_task_failed_timestamp_seconds{%(sel)s})",
        for_="%(task_failed_for)s",
        severity="warning",
        summary="A GPU image task (an upload, a download or a delete: see task_type) ended"
        " in ERROR.",
        description="Task {{ $labels.task_id }} ({{ $labels.task_type }}) %(where)s ended in"
        " ERROR at {{ $value | humanizeTimestamp }}"
        "{{ if $labels.image_id }}; it names GPU image {{ $labels.image_id }}{{ end }}."
        " Error: {{ $error }}. The alert resolves when the task leaves the exporter's failed-task"
        " window (a day by default).",
        fires_when="an image task ended in `ERROR` within the exporter's `failed_task_window`, "
        "for `task_failed_for`; one alert per task, resolved when the window passes",
        labels="`project_id`, `region_id`, `task_id`, `task_type`, `image_id` (if the task names "
        "one)",
    ),
    Alert(
        "GcoreGpuImageMissing",
        expr="%(image_down)s\nand ignoring (reason)\n%(not_found)s",
        for_="%(missing_for)s",
        severity="critical",
        summary="A watched GPU image no longer exists.",
        description="The Gcore API answers 404 Not Found for GPU image {{ $image }} %(where)s,"
        " which the exporter is configured to watch: the image was deleted or the target"
        " is wrong.{{ $clusters }}",
        fires_when="the API answers 404 for a configured image (on every replica), for "
        "`missing_for`",
        labels="image",
    ),
    Alert(
        # A cluster and its image are on one shard (sharding by the image id), so the join works
        # per exporter; `image_id!=""` leaves out clusters that boot from no image.
        "GcoreGpuClusterImageNotActive",
        expr='max without (%(replicas)s) (gcore_gpu_cluster_info{%(sel)s, image_id!=""})\n'
        "* on (%(image_key)s) group_left ()\n"
        "(\n"
        "  group by (%(image_key)s) (\n"
        '    gcore_gpu_image_status{%(sel)s, status!="active"} == 1\n'
        "  )\n"
        "  or\n"
        "  group by (%(image_key)s) (\n"
        '    gcore_gpu_image_last_error_info{%(sel)s, reason="not_found"} == 1\n'
        "  )\n"
        ")",
        for_="%(failed_for)s",
        severity="critical",
        summary="A GPU cluster boots from an image that is missing or not active.",
        description="GPU cluster {{ $labels.cluster_name }} ({{ $labels.cluster_id }},"
        " {{ $labels.kind }}) %(where)s boots from GPU image {{ $image }}, which has been"
        " {{ $imagestate }} for more than %(failed_for)s: the cluster cannot scale out, rebuild"
        " or recover a server until the image is active again or the cluster uses another.",
        fires_when="a GPU cluster boots from an image that is not `active` or answers 404, for "
        "`failed_for`",
        labels="image, `cluster_id`, `cluster_name`, `kind`, `status` (the cluster's)",
    ),
    Alert(
        "GcoreGpuImageFetchFailing",
        expr="%(image_down)s\nunless ignoring (reason)\n%(not_found)s",
        for_="%(fetch_failing_for)s",
        severity="warning",
        summary="The exporter cannot fetch a GPU image.",
        description="Fetching GPU image {{ $image }} %(where)s from the Gcore API has failed for"
        " more than %(fetch_failing_for)s on every replica of the exporter (last error:"
        " {{ $reason }}); its metrics are stale or withdrawn.",
        fires_when="every fetch of the image failed (not 404) on every replica, for "
        "`fetch_failing_for`",
        labels="image",
    ),
    Alert(
        # A scope's image listing while the exporter still has images of it, or an account-wide
        # listing (`endpoint` projects, regions or tasks, without project or region).
        "GcoreGpuImageDiscoveryFailing",
        expr="%(images_down)s\nand on (%(scope)s)\n"
        "group by (%(scope)s) (gcore_gpu_image_up{%(sel)s})\n"
        "or\n"
        "max without (%(replicas)s) (\n"
        '  gcore_exporter_discovery_up{%(sel)s, endpoint!="images"}\n) == 0',
        for_="%(discovery_failing_for)s",
        severity="warning",
        summary="A listing of the Gcore API fails on every replica of the exporter.",
        description='{{ if eq $labels.endpoint "tasks" }}Listing the tasks of the watched'
        " projects and regions%(in_cluster)s has failed for more than %(discovery_failing_for)s"
        " on every replica of the exporter: failed image tasks are not seen meanwhile, so"
        " GcoreGpuImageTaskFailed cannot fire for them, and an upload into an empty project and"
        " region shows only at the next discovery."
        '{{ else if eq $labels.endpoint "clusters" }}Listing the {{ $labels.kind }} GPU clusters'
        " %(where)s has failed for more than %(discovery_failing_for)s on every replica of the"
        " exporter: the clusters last listed are kept, so gcore_gpu_image_clusters and"
        " GcoreGpuClusterImageNotActive may be out of date."
        '{{ else if eq $labels.endpoint "images" }}Listing the {{ $labels.kind }} GPU images'
        " %(where)s has failed for more than %(discovery_failing_for)s on every replica of the"
        " exporter: images added there are not seen, and those already known are fetched from"
        " the listing, so they fail too."
        "{{ else }}Listing the {{ $labels.endpoint }} of the account%(in_cluster)s has failed"
        " for more than %(discovery_failing_for)s on every replica of the exporter: wildcard"
        " targets are expanded with the {{ $labels.endpoint }} last listed (none before the"
        " first success), so new ones are not watched.{{ end }}",
        fires_when="the image listing of a project/region (a `PROJECT/REGION` target or one a "
        "wildcard found) failed on every replica, for `discovery_failing_for`; or a "
        "project/region's GPU cluster listing did; or the account's projects, regions or tasks "
        "listing did",
        labels='`project_id`, `region_id`, `kind`, `endpoint="images"` or `"clusters"`; or '
        "`endpoint` alone (`projects`, `regions`, `tasks`)",
    ),
    Alert(
        "GcoreGpuImageDiscoveryFailing",
        expr="%(images_down)s\nunless on (%(scope)s)\ngcore_gpu_image_up{%(sel)s}",
        for_="%(discovery_failing_for)s",
        severity="critical",
        summary="The exporter cannot list the GPU images of a project and region, and watches"
        " none there.",
        description="Listing the {{ $labels.kind }} GPU images %(where)s has failed for more than"
        " %(discovery_failing_for)s on every replica of the exporter, which has no image of it:"
        " nothing there is watched, so no other GPU image alert can fire for it.",
        fires_when="an image listing failed, and the exporter has no image series of that "
        "project/region (nothing there is watched)",
        labels="`project_id`, `region_id`, `kind`, `endpoint`",
    ),
    Alert(
        "GcoreGpuImageExporterDown",
        expr="max without (%(replicas)s) (%(up)s) == 0\nor\nabsent(%(up)s)",
        for_="%(exporter_down_for)s",
        severity="warning",
        summary="No replica of the Gcore GPU image exporter can be scraped.",
        description="{{ if eq $value 0.0 }}Prometheus cannot scrape any target of the exporter"
        "{{ else }}Prometheus has no scrape target matching %(selector_text)s{{ end }}"
        " for more than %(exporter_down_for)s; no GPU image alert can fire meanwhile.",
        fires_when="no replica of the exporter can be scraped, or there is no target, for "
        "`exporter_down_for`",
    ),
    Alert(
        "GcoreGpuImageExporterReplicaDown",
        expr="%(up)s == 0\nand ignoring (%(replicas)s)\nmax without (%(replicas)s) (%(up)s) == 1",
        for_="%(exporter_down_for)s",
        severity="info",
        summary="A replica of the Gcore GPU image exporter cannot be scraped.",
        description="Prometheus cannot scrape the exporter at {{ $labels.instance }} for more"
        " than %(exporter_down_for)s; other replicas are up, so alerts still fire.",
        fires_when="one replica cannot be scraped while another can, for `exporter_down_for`",
        labels="`instance`",
    ),
    Alert(
        "GcoreGpuImageExporterShardDown",
        expr="count without (shard) (\n"
        '  count_values without (%(replicas)s) ("shard", gcore_exporter_shard_ordinal{%(sel)s})\n'
        ")\n< max without (%(replicas)s) (gcore_exporter_total_shards{%(sel)s})",
        for_="%(exporter_down_for)s",
        severity="warning",
        summary="A shard of the Gcore GPU image exporter is not scraped: its images go unwatched.",
        description="Only {{ $value }} of the exporter's shards%(in_cluster)s have been scraped for"
        " more than %(exporter_down_for)s: the images of the others have no series, so no alert"
        " about them can fire.",
        fires_when="fewer shards are scraped than `gcore_exporter_total_shards` says, for "
        "`exporter_down_for`: the missing shards' images have no series",
    ),
    Alert(
        "GcoreGpuImageApiUnauthorized",
        expr="max without (%(replicas)s, endpoint) (\n"
        '  increase(gcore_exporter_api_requests_total{%(sel)s, code=~"401|403"}'
        "[%(api_error_window)s])\n) > 0",
        for_="%(unauthorized_for)s",
        severity="critical",
        summary="The Gcore API rejects the exporter's requests.",
        description='{{ if eq $labels.code "403" }}The Gcore API has kept answering the exporter'
        " with 403 Forbidden for more than %(unauthorized_for)s (at least once in every"
        " %(api_error_window)s): the API key is accepted but is forbidden to read some projects,"
        " regions or images (GcoreGpuImageDiscoveryFailing and GcoreGpuImageFetchFailing name"
        " them).{{ else }}The Gcore API has kept answering the exporter with 401 Unauthorized for"
        " more than %(unauthorized_for)s (at least once in every %(api_error_window)s): the API"
        " key is wrong, revoked or expired.{{ end }}",
        fires_when="the API answered 401 (bad key) or 403 (forbidden) at least once in every "
        "`api_error_window`, for `unauthorized_for`; from `gcore_exporter_api_requests_total`, so "
        "with no image series at all",
        labels="`code`",
    ),
    Alert(
        "GcoreGpuImageApiRateLimited",
        expr="count without (image_id) (\n"
        "  max without (%(replicas)s) (\n"
        '    increase(gcore_gpu_image_fetch_errors_total{%(sel)s, reason="rate_limited"}'
        "[%(api_error_window)s])\n  ) > 0\n)",
        for_="%(rate_limited_for)s",
        severity="warning",
        summary="The Gcore API rate-limits the exporter.",
        description="Fetches of {{ $value }} GPU image(s) %(where)s failed with"
        " 429 Too Many Requests in the last %(api_error_window)s, for more than"
        " %(rate_limited_for)s: raise the interval or lower the concurrency.",
        fires_when="fetches failed with 429 within `api_error_window`, for `rate_limited_for`",
        labels="`project_id`, `region_id`, `reason`",
    ),
)


# The image pipeline's SLOs (docs/metrics.md#image-pipeline), per project, region and task type
# over `task_slo_window`; each replica counts the same tasks, so replicas are maxed first. Below
# `task_slo_min_tasks` ended tasks a ratio or a p95 says little: one failure of two does not page.
PIPELINE_ALERTS: tuple[Alert, ...] = (
    Alert(
        "GcoreGpuImageTaskSuccessRatioLow",
        expr="%(tasks_finished_ok)s\n/\n%(tasks_finished)s\n< %(task_success_ratio)s\n"
        "and\n%(tasks_finished)s\n>= %(task_slo_min_tasks)s",
        for_="%(task_slo_for)s",
        severity="warning",
        summary="Too few GPU image tasks succeed.",
        description="Only {{ $value | humanizePercentage }} of the {{ $labels.task_type }} tasks"
        " %(where)s that ended in the last %(task_slo_window)s finished; the others ended in"
        " ERROR (threshold %(task_success_percent)s, at least %(task_slo_min_tasks)s tasks)."
        " GcoreGpuImageTaskFailed names each failure and its error.",
        fires_when="of the image tasks of one type that ended in a project/region within "
        "`task_slo_window` (at least `task_slo_min_tasks`), fewer than `task_success_ratio` "
        "finished (the others ended in `ERROR`), for `task_slo_for`",
        labels="`project_id`, `region_id`, `task_type`",
    ),
    Alert(
        "GcoreGpuImageTaskDurationHigh",
        expr="histogram_quantile(\n  0.95,\n%(task_duration_buckets)s\n)"
        " > %(task_duration_p95_seconds)s\nand\n%(tasks_timed)s\n>= %(task_slo_min_tasks)s",
        for_="%(task_slo_for)s",
        severity="warning",
        summary="GPU image tasks take too long.",
        description="The 95th percentile of the time from creation to end of the"
        " {{ $labels.task_type }} tasks %(where)s that finished in the last %(task_slo_window)s is"
        " {{ $value | humanizeDuration }} (threshold %(task_duration_p95)s).",
        fires_when="the p95 of `finished_on - created_on` of the image tasks of one type that "
        "finished in a project/region within `task_slo_window` (at least `task_slo_min_tasks`) is "
        "above `task_duration_p95`, for `task_slo_for`",
        labels="`project_id`, `region_id`, `task_type`",
    ),
)
ALERTS = ALERTS + PIPELINE_ALERTS


def _pipeline_context(config: Config, without: str) -> dict[str, str]:
    """What `%(name)s` may name in PIPELINE_ALERTS."""
    t, sel = config.thresholds, config.selector

    def ended(metric: str, matchers: str = "") -> str:
        """The tasks of `metric` that ended in the window, per project, region and task type."""
        return (
            f"sum without (state) (\n  max without ({without}) (\n    increase({metric}"
            f"{{{sel}{matchers}}}[{t['task_slo_window']}])\n  )\n)"
        )

    finished = ', state="FINISHED"'
    return {
        "tasks_finished": ended("gcore_gpu_image_tasks_finished_total"),
        "tasks_finished_ok": ended("gcore_gpu_image_tasks_finished_total", finished),
        "tasks_timed": ended("gcore_gpu_image_task_duration_seconds_count", finished),
        "task_duration_buckets": "\n".join(
            "  " + line
            for line in ended("gcore_gpu_image_task_duration_seconds_bucket", finished).split("\n")
        ),
        "task_duration_p95_seconds": f"{parse_duration(t['task_duration_p95']):g}",
        "task_success_percent": f"{float(t['task_success_ratio']) * 100:g}%",
    }


def _context(config: Config, replicas: Sequence[str]) -> dict[str, str]:
    """What `%(name)s` may name in ALERTS: every threshold, plus these."""
    t, sel, cluster = config.thresholds, config.selector, config.cluster_label
    without = ", ".join(replicas)
    where = "in project {{ $project }}, region {{ $region }}"
    in_cluster = f" of cluster {{{{ $labels.{cluster} }}}}" if cluster else ""
    scope = [*([cluster] if cluster else []), "project_id", "region_id"]
    return {
        **t,
        "lock_age_seconds": f"{parse_duration(t['lock_age']):g}",
        "transitional_seconds": f"{parse_duration(t['transitional_for']):g}",
        "stuck_lock_seconds": f"{parse_duration(t['stuck_lock_age']):g}",
        "active_or_transitional": "|".join(("active", *TRANSITIONAL_STATUSES)),
        "transitional": "|".join(TRANSITIONAL_STATUSES),
        "sel": sel,
        "replicas": without,
        "scope": ", ".join(scope),
        "image_key": ", ".join([*scope, "image_id"]),
        "image_down": f"max without ({without}) (gcore_gpu_image_up{{{sel}}}) == 0",
        "not_found": f"max without ({without}) (\n"
        f'  gcore_gpu_image_last_error_info{{{sel}, reason="not_found"}}\n) == 1',
        "images_down": f"max without ({without}) (\n"
        f'  gcore_exporter_discovery_up{{{sel}, endpoint="images"}}\n) == 0',
        "up": f"up{{{sel}}}",
        "in_use": f"max without ({without}) (gcore_gpu_image_clusters{{{sel}}}) > 0",
        "selector_text": "{" + sel + "}",
        "where": where + in_cluster,
        "in_cluster": in_cluster,
        **_pipeline_context(config, without),
    }


class Lookup(NamedTuple):
    """A template variable that an annotation may use: `define` sets it (Go template text)."""

    var: str
    define: str


def _lookups(config: Config) -> tuple[Lookup, ...]:
    """The variables an annotation may use, each defined by a query of the exporter's series of
    the alert's labels; a definition may use the variables before it."""
    # A raw Go string inside printf: `%` doubled; the selector holds no backtick (checked).
    sel = config.selector.replace("%", "%%")
    cluster = [config.cluster_label] if config.cluster_label else []

    def matching(*labels: str) -> str:
        """printf arguments: a selector of the alert's values of `labels` (and of the cluster)."""
        names = [*cluster, *labels]
        matchers = ",".join(f"{name}=%q" for name in names)
        return f"`{sel},{matchers}` " + " ".join(f"$labels.{name}" for name in names)

    def named(what: str) -> Lookup:
        """$project or $region: `"NAME" (ID)` from the info series, else the bare ID."""
        return Lookup(
            f"${what}",
            f"{{{{- ${what} := $labels.{what}_id -}}}}\n"
            f"{{{{- with printf `gcore_gpu_{what}_info{{%s}}` (printf {matching(f'{what}_id')})"
            " | query -}}\n"
            f"  {{{{- ${what} = printf `%q (%s)` (. | first | label `{what}_name`)"
            f" $labels.{what}_id -}}}}\n"
            "{{- end -}}\n",
        )

    return (
        Lookup(
            "$sel",
            f"{{{{- $sel := printf {matching('project_id', 'region_id', 'image_id')} -}}}}\n",
        ),
        Lookup(
            "$tsel",
            f"{{{{- $tsel := printf {matching('project_id', 'region_id', 'task_id')} -}}}}\n",
        ),
        # $image is `"NAME" (IMAGE_ID)` from the current info series, else from the last one seen
        # within NAME_LOOKBACK (values are withdrawn after a 404 or once stale), else the bare ID.
        Lookup(
            "$image",
            "{{- $image := $labels.image_id -}}\n"
            "{{- with printf `topk(1, 2 * gcore_gpu_image_info{%s}"
            " or last_over_time(gcore_gpu_image_info{%s}[" + NAME_LOOKBACK + "]))` $sel $sel"
            " | query -}}\n"
            "  {{- $image = printf `%q (%s)` (. | first | label `name`) $labels.image_id -}}\n"
            "{{- end -}}\n",
        ),
        Lookup(
            "$task",
            "{{- $task := `an unknown task` -}}\n"
            "{{- with printf `gcore_gpu_image_task_info{%s}` $sel | query -}}{{- with first . -}}\n"
            "  {{- $task = printf `task %s (%s, state %s)`"
            " (label `task_id` .) (label `task_type` .) (label `task_state` .) -}}\n"
            "{{- end -}}{{- end -}}\n",
        ),
        Lookup(
            "$task_error",
            "{{- $task_error := `none given` -}}\n"
            "{{- with printf `gcore_gpu_image_task_info{%s}` $sel | query -}}\n"
            "  {{- with . | first | label `task_error` -}}{{- $task_error = . -}}{{- end -}}\n"
            "{{- end -}}\n",
        ),
        Lookup(
            "$reason",
            "{{- $reason := `unknown` -}}\n"
            "{{- with printf `gcore_gpu_image_last_error_info{%s}` $sel | query -}}\n"
            "  {{- $reason = . | first | label `reason` -}}\n"
            "{{- end -}}\n",
        ),
        Lookup(
            "$error",
            "{{- $error := `none given` -}}\n"
            "{{- with printf `gcore_gpu_image_task_failed_info{%s}` $tsel | query -}}\n"
            "  {{- with . | first | label `error` -}}{{- $error = . -}}{{- end -}}\n"
            "{{- end -}}\n",
        ),
        # `$clusters`: empty where clusters are not polled (or not yet listed), else a sentence.
        Lookup(
            "$clusters",
            "{{- $clusters := `` -}}\n"
            "{{- with printf `gcore_gpu_image_clusters{%s}` $sel | query -}}\n"
            "  {{- $clusters = ` No GPU cluster boots from it.` -}}\n"
            "  {{- with . | first | value -}}\n"
            "    {{- $clusters = printf ` %.0f GPU cluster(s) boot from it: they cannot scale out,"
            " rebuild or recover a server from it.` . -}}\n"
            "  {{- end -}}\n"
            "{{- end -}}\n",
        ),
        Lookup(
            "$imagestate",
            "{{- $imagestate := `missing (404 Not Found)` -}}\n"
            "{{- with printf `gcore_gpu_image_status{%s} == 1` $sel | query -}}\n"
            "  {{- $imagestate = printf `in status %q` (. | first | label `status`) -}}\n"
            "{{- end -}}\n",
        ),
        named("project"),
        named("region"),
    )


def _uses(text: str, var: str) -> bool:
    return re.search(re.escape(var) + r"\b", text) is not None


def _template(text: str, lookups: tuple[Lookup, ...]) -> str:
    """`text` preceded by the definitions of the variables it uses, and of theirs."""
    needed = {lookup.var for lookup in lookups if _uses(text, lookup.var)}
    for lookup in reversed(lookups):  # a definition uses only variables defined before it
        if lookup.var in needed:
            needed |= {other.var for other in lookups if _uses(lookup.define, other.var)}
    return "".join(lookup.define for lookup in lookups if lookup.var in needed) + text


def _rule(
    alert: Alert, context: Mapping[str, str], lookups: tuple[Lookup, ...], runbook: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr % context}
    duration = alert.for_ % context
    if duration and parse_duration(duration) > 0:
        rule["for"] = duration
    rule["labels"] = {"severity": alert.severity}
    rule["annotations"] = {
        "summary": alert.summary,
        "description": _template(alert.description % context, lookups),
        "runbook_url": f"{runbook}#{alert.name.lower()}",
    }
    return rule


def _config(
    thresholds: Mapping[str, str] | None, job: str, selector: str | None, cluster_label: str
) -> Config:
    return Config(
        dict(thresholds or {}), f'job="{job}"' if selector is None else selector, cluster_label
    )


def groups(
    thresholds: Mapping[str, str] | None = None,
    *,
    job: str = DEFAULT_JOB,
    selector: str | None = None,
    cluster_label: str = "",
    replica_labels: Sequence[str] = REPLICA_LABELS,
    runbook: str = DEFAULT_RUNBOOK,
) -> list[dict[str, Any]]:
    """The rule groups, as Prometheus and the PrometheusRule `spec.groups` expect them.
    `selector` (label matchers) replaces the default `job="JOB"`."""
    config = _config(thresholds, job, selector, cluster_label)
    replicas = [check_label_name(label, "replica label") for label in replica_labels]
    if not replicas or config.cluster_label in replicas:
        raise ValueError("replica labels must be given and differ from the cluster label")
    context, lookups = _context(config, replicas), _lookups(config)
    rules = [_rule(a, context, lookups, runbook) for alert in ALERTS for a in _escalated(alert)]
    return [{"name": GROUP, "rules": rules}]


def _escalated(alert: Alert) -> tuple[Alert, ...]:
    """`alert`, or with `escalate` its two rules: as it is for an image that no GPU cluster
    boots from, critical for one that clusters boot from."""
    if not alert.escalate:
        return (alert,)
    on = "\n%s on (%%(image_key)s)\n%%(in_use)s"
    return (
        alert._replace(expr=alert.expr + on % "unless"),
        alert._replace(expr=alert.expr + on % "and", severity="critical"),
    )


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def render(thresholds: Mapping[str, str] | None = None, **options: Any) -> str:
    """A Prometheus rule file; `thresholds` overrides any of DEFAULTS, `options` are those of
    `groups` (job, selector, cluster_label, replica_labels, runbook)."""
    header = "# Generated by deploy/prometheus/render_rules.py: do not edit, see docs/deploy.md.\n"
    return header + _dump({"groups": groups(thresholds, **options)})


def render_prometheus_rule(thresholds: Mapping[str, str] | None = None, **options: Any) -> str:
    """The same groups as `render`, wrapped in a Prometheus Operator PrometheusRule."""
    header = (
        "# Generated by deploy/prometheus/render_rules.py --format prometheusrule:"
        " do not edit, see docs/deploy.md.\n"
    )
    return header + _dump(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {
                "name": "gcore-gpu-image-exporter",
                "labels": {"app.kubernetes.io/name": "gcore-gpu-image-exporter"},
            },
            "spec": {"groups": groups(thresholds, **options)},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument(
        "--replica-labels",
        default=",".join(REPLICA_LABELS),
        metavar="LABELS",
        help="comma-separated labels that tell replicas apart, aggregated away"
        f" (default: {','.join(REPLICA_LABELS)})",
    )
    parser.add_argument("--runbook", default=DEFAULT_RUNBOOK, help="URL of docs/runbook.md")
    parser.add_argument("--format", choices=("rules", "prometheusrule"), default="rules")
    args = parser.parse_args(argv)
    config = config_from(parser, args)
    out = render if args.format == "rules" else render_prometheus_rule
    replicas = [label.strip() for label in args.replica_labels.split(",") if label.strip()]
    try:
        text = out(
            config.thresholds,
            selector=config.selector,
            cluster_label=config.cluster_label,
            replica_labels=replicas,
            runbook=args.runbook,
        )
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
