#!/usr/bin/env python3
"""Builds grafana/gcore-gpu-images.json (stdlib only), so its ~35 panels stay consistent.

The JSON is the artefact people import (and, copied to deploy/grafana, the Grafana sidecar's
ConfigMap); this script is its source and `panels.py` holds the generic helpers it writes panels
with. Edit here, then run `python3 grafana/build_dashboard.py` (writes both files) or `--check`
(fails if one is out of date; the tests run the check without any site-packages). It takes the
options of `deploy/prometheus/render_rules.py` (`exporter/alerting.py`, `Config`): colours follow
the thresholds (`--set`, `--scale`), queries the selector (`--selector`, `--job`) and the cluster
label (`--cluster-label`, which adds a Cluster variable). docs/dashboard.md lists the panels with
their descriptions (`python3 docs/generate.py` writes the list).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
# Run as a script, even by `python3 -I` (no script folder on sys.path): the helpers beside this
# file and the repository's `exporter` package (only its stdlib-only `alerting` module is used).
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from panels import (  # noqa: E402
    ANY_IS_BAD,
    bargauge,
    collapse,
    colored_text,
    column,
    fixed_color,
    layout,
    organize,
    panel,
    query_variable,
    row,
    stat,
    steps,
    table,
    target,
    timeseries,
    value_map,
)

from exporter.alerting import (  # noqa: E402
    FAILED_STATUSES,
    KNOWN_STATUSES,
    RUNBOOK_URL,
    TRANSITIONAL_STATUSES,
    Config,
    add_options,
    config_from,
    parse_duration,
)

OUTPUT = HERE / "gcore-gpu-images.json"
# The same JSON in the folder of the Grafana sidecar's ConfigMap (kustomize reads no file above it).
CONFIGMAP_COPY = HERE.parent / "deploy" / "grafana" / "gcore-gpu-images.json"
UID = "gcore-gpu-images"
TOP = 100
"""Rows a per-image panel shows at most (`topk`): 50,000 images in one table hang a browser."""
OPEN_ROWS = frozenset({"Overview", "Needs attention"})
"""Rows open when the dashboard loads; the others start collapsed and query once opened."""


def top(expr: str) -> str:
    return f"topk({TOP}, {expr})"


class Queries(NamedTuple):
    """Label selectors and grouping keys, for one `Config`. Per-image series carry job/instance
    (from the scrape), the cluster label if one is configured, and the image key; the dashboard
    groups by the key (`max by`), so replicas that scrape the same images count once. Only
    `gcore_gpu_image_info` carries an image's kind: image queries drop the images whose info
    says another kind than the Kind variable's (`of_kind`, `names`)."""

    cluster: tuple[str, ...]  # the cluster label, if any
    key: str  # an image across replicas: [cluster,] project_id, region_id, image_id
    scope_key: str  # a project/region across replicas
    listing_key: str  # a listed project/region and kind across replicas
    scrape_key: str  # one replica's image: job, instance and the key
    replica_key: str  # one replica: [cluster,] job, instance
    key_columns: tuple[str, ...]
    exp: str  # the exporter's series of the selected jobs and instances
    scope: str  # ... of the selected projects and regions
    listing: str  # ... of the image listings of the selected projects, regions and kinds
    img: str  # ... of the selected images
    other_kinds: str  # the info of the selected images of a kind not selected
    alerts: str  # our ALERTS of the selection
    names: str  # every selected image's name (see names())


def queries(config: Config, selector: str = "") -> Queries:
    """`selector`: label matchers every selection of the exporter's series carries besides the
    Job and Instance variables (none by default: the job is whatever Prometheus named it)."""
    cluster = (config.cluster_label,) if config.cluster_label else ()
    key_columns = (*cluster, "project_id", "region_id", "image_id")
    key = ", ".join(key_columns)
    exp = ", ".join(
        [
            *([selector] if selector else []),
            *(f'{label}=~"$cluster"' for label in cluster),
            'job=~"$job", instance=~"$instance"',
        ]
    )
    scope = f'{exp}, project_id=~"$project_id", region_id=~"$region_id"'
    img = f'{scope}, image_id=~"$image"'
    # Alerts without a label (e.g. ExporterDown from absent()) must survive a concrete selection.
    alerts = ", ".join(
        [
            'alertname=~"GcoreGpuImage.*"',
            *(f'{label}=~"$cluster|"' for label in cluster),
            'job=~"$job|", instance=~"$instance|", project_id=~"$project_id|"',
            'region_id=~"$region_id|", image_id=~"$image|"',
        ]
    )
    scope_key = ", ".join([*cluster, "project_id", "region_id"])
    return Queries(
        cluster=cluster,
        key=key,
        scope_key=scope_key,
        listing_key=f"{scope_key}, kind",
        scrape_key=f"job, instance, {key}",
        replica_key=", ".join([*cluster, "job", "instance"]),
        key_columns=key_columns,
        exp=exp,
        scope=scope,
        listing=f'{scope}, endpoint="images", kind=~"$kind"',
        img=img,
        other_kinds=f'gcore_gpu_image_info{{{img}, kind!~"$kind"}}',
        alerts=alerts,
        names=names(key, img),
    )


def of_kind(q: Queries, expr: str) -> str:
    """`expr` (per-image series) without the images of a kind the Kind variable leaves out; an
    image without info (404, never fetched) has no kind and stays."""
    return f"({expr} unless on ({q.key}) {q.other_kinds})"


def image(q: Queries, metric: str, matchers: str = "") -> str:
    """`metric` of the selected images of the selected kinds; `matchers` narrow it further."""
    return of_kind(q, f"{metric}{{{q.img}{', ' + matchers if matchers else ''}}}")


# Green usable, blue on its way, red or orange failed, purple a status the exporter does not know.
STATUS_COLORS = {
    "active": "green",
    **dict.fromkeys(TRANSITIONAL_STATUSES, "blue"),
    **{"killed": "red", "deleted": "red", "pending_delete": "orange", "deactivated": "orange"},
    "unknown": "purple",
}
STATUS_TEXT_MAP = value_map({s: (s, c) for s, c in STATUS_COLORS.items()})
STATUS_CODES = {status: i + 1 for i, status in enumerate(KNOWN_STATUSES)}
STATUS_CODES["unknown"] = len(KNOWN_STATUSES) + 1
STATUS_CODE_MAP = value_map({str(STATUS_CODES[s]): (s, c) for s, c in STATUS_COLORS.items()})
NOT_ACTIVE = 'status!="active"'
TASK_STATE_MAP = value_map(
    {
        "ERROR": ("ERROR", "red"),
        "RUNNING": ("RUNNING", "blue"),
        "NEW": ("NEW", "blue"),
        "FINISHED": ("FINISHED", "green"),
        "": ("unknown (task lookup failed)", "orange"),
    }
)
INFO_COLUMNS = (
    "name",
    "kind",
    "os_distro",
    "os_version",
    "architecture",
    "gpu_driver_version",
    "cuda_toolkit_version",
    "visibility",
)


def names(key: str, selector: str) -> str:
    """One series of value 1 per image of the selected kinds, labelled with its name; an image
    without info (404, never fetched) gets its image_id as name, so joins never drop it nor zero
    its value. One name per image even when replicas disagree (a rename between their polls)."""
    others = f'gcore_gpu_image_info{{{selector}, kind!~"$kind"}}'
    return (
        f"topk by ({key}) (1, group by ({key}, name) (\n"
        f'  gcore_gpu_image_info{{{selector}, kind=~"$kind"}}\n'
        f"  or on ({key})\n"
        f"  label_replace(\n"
        f"    gcore_gpu_image_up{{{selector}}} unless on ({key}) {others},\n"
        '    "name", "$1", "image_id", "(.+)"\n'
        "  )\n"
        "))"
    )


def id_or_name(what: str, selector: str, ids: str, by: tuple[str, ...]) -> str:
    """One series per `what` (project or region) id of `ids`, labelled `{what}_name` with its
    name from `gcore_gpu_{what}_info` (listed when a wildcard is configured), else with its id;
    one name per id even when replicas disagree."""
    on = ", ".join([*by, f"{what}_id"])
    return (
        f"topk by ({on}) (1, group by ({on}, {what}_name) (\n"
        f"  gcore_gpu_{what}_info{{{selector}}} and on ({on}) {ids}\n"
        f"  or on ({on})\n"
        f'  label_replace(group by ({on}) ({ids}), "{what}_name", "$1", "{what}_id", "(.+)")\n'
        "))"
    )


def with_scope_names(q: Queries, expr: str, ids: str) -> str:
    """`expr` labelled with project_name and region_name (from the info series, else the ids);
    `ids` selects series with every project_id and region_id of `expr`."""
    for what in ("project", "region"):
        on = ", ".join([*q.cluster, f"{what}_id"])
        expr = (
            f"{expr}\n* on ({on}) group_left ({what}_name)\n"
            f"{id_or_name(what, q.exp, ids, q.cluster)}"
        )
    return expr


def named(q: Queries, expr: str, extra: str = "") -> str:
    """`expr` per image (deduplicated across exporters) with the image's name as a label."""
    by = f"{q.key}, name" + (f", {extra}" if extra else "")
    return f"max by ({by}) (\n  ({expr})\n  * on ({q.key}) group_left (name)\n  {q.names}\n)"


# --- the dashboard ----------------------------------------------------------------------------


def overview(q: Queries) -> list[dict[str, Any]]:
    status_overrides = [fixed_color(s, c) for s, c in STATUS_COLORS.items() if s != "unknown"]
    status_overrides.append(
        fixed_color(f"^(?!({'|'.join(KNOWN_STATUSES)})$).*", STATUS_COLORS["unknown"], regex=True)
    )
    return [
        row("Overview"),
        stat(
            "Images monitored",
            "GPU images the exporter watches for the current selection (explicit targets plus"
            " images discovered in the selected projects/regions). Zero means the targets are"
            " wrong or the exporter is not scraped: check the exporter panels below.",
            [
                target(
                    f"count(max by ({q.key}) {image(q, 'gcore_gpu_image_up')}) or vector(0)",
                    instant=True,
                )
            ],
            3,
            thresholds=steps((None, "red"), (1, "green")),
        ),
        stat(
            "Images by status",
            "How many images are in each Gcore status. Green is active (usable), blue a transient"
            f" status ({', '.join(TRANSITIONAL_STATUSES)}), red/orange a failed one"
            f" ({', '.join(FAILED_STATUSES)}), purple a status unknown to the exporter."
            " Anything not green for long is listed in 'Images not active'.",
            [
                target(
                    f"count by (status) (max by ({q.key}, status) "
                    f"({image(q, 'gcore_gpu_image_status')} == 1))",
                    legend="{{status}}",
                    instant=True,
                )
            ],
            6,
            color_mode="fixed",
            overrides=status_overrides,
        ),
        stat(
            "Not active",
            "Images whose status is anything but active. A transient status during an upload is"
            " normal; a failed one is not (alert GcoreGpuImageNotActive). See 'Images not active'"
            " for which and since when.",
            [
                target(
                    f"count(max by ({q.key}) "
                    f"({image(q, 'gcore_gpu_image_status', NOT_ACTIVE)}"
                    " == 1)) or vector(0)",
                    instant=True,
                )
            ],
            3,
            thresholds=ANY_IS_BAD,
        ),
        stat(
            "Locked",
            "Images a Gcore task holds a lock on (an upload, a copy, a deletion...). Short locks"
            " are normal; long ones or a task in ERROR are not (alert GcoreGpuImageLockedTooLong)."
            " See 'Locked images'.",
            [
                target(
                    f"count(max by ({q.key}) {image(q, 'gcore_gpu_image_locked')}"
                    " == 1) or vector(0)",
                    instant=True,
                )
            ],
            3,
            thresholds=steps((None, "green"), (1, "orange")),
        ),
        stat(
            "Failing to fetch",
            "Images whose last fetch from the Gcore API failed (gcore_gpu_image_up == 0 on every"
            " exporter). Their other values are stale or withdrawn. See 'Images failing to fetch'"
            " for the reason; alerts GcoreGpuImageMissing / GcoreGpuImageFetchFailing.",
            [
                target(
                    f"count(max by ({q.key}) {image(q, 'gcore_gpu_image_up')} == 0) or vector(0)",
                    instant=True,
                )
            ],
            3,
            thresholds=ANY_IS_BAD,
        ),
        stat(
            "Total size",
            "Sum of the sizes Gcore reports for the selected images (images without a size yet,"
            " e.g. still uploading, count as 0). Useful for storage cost.",
            [
                target(
                    f"sum(max by ({q.key}) {image(q, 'gcore_gpu_image_size_bytes')})",
                    instant=True,
                )
            ],
            3,
            unit="bytes",
            thresholds=steps((None, "blue")),
        ),
        stat(
            "Firing alerts",
            "Alerts of this exporter's rules (GcoreGpuImage*) firing now for the selection. Each"
            " is listed in 'Pending and firing alerts' below; the Runbook link at the top says"
            " what to do.",
            [
                target(
                    f'count(ALERTS{{{q.alerts}, alertstate="firing"}}) or vector(0)', instant=True
                )
            ],
            3,
            thresholds=ANY_IS_BAD,
        ),
    ]


def attention(q: Queries, thresholds: Mapping[str, str]) -> list[dict[str, Any]]:
    lock_age = thresholds["lock_age"]  # the warning of GcoreGpuImageLockedTooLong
    transitional = thresholds["transitional_for"]  # the warning of GcoreGpuImageNotActive
    not_active = (
        f"time() - (\n"
        f"  gcore_gpu_image_status_since_timestamp_seconds{{{q.img}}}\n"
        f"  * on ({q.scrape_key}) group_left (status)\n"
        f"  (gcore_gpu_image_status{{{q.img}, {NOT_ACTIVE}}} == 1)\n"
        ")"
    )
    task_labels = "task_id, task_type, task_state, task_error"

    def with_task(metric: str, scale: str = "") -> str:
        return (
            f"gcore_gpu_image_{metric}{{{q.img}}}{scale}\n"
            f"  * on ({q.scrape_key}) group_left ({task_labels})\n"
            f"  gcore_gpu_image_task_info{{{q.img}}}"
        )

    locked = named(q, with_task("lock_age_seconds"), task_labels)  # the longest-held first
    finished = "lock_task_finished_timestamp_seconds"
    # Per image failing on every replica: the most frequent error reason of the last 15 minutes
    # and how often (on the replica that saw it most), even if a fetch never succeeded.
    errors = f"increase(gcore_gpu_image_fetch_errors_total{{{q.img}}}[15m])"
    failing = (
        f"topk by ({q.key}) (1, max by ({q.key}, reason) ({errors}))\n"
        f"  and on ({q.key}) (max by ({q.key}) (gcore_gpu_image_up{{{q.img}}}) == 0)"
    )
    last_success = (
        f"max by ({q.key}) (gcore_gpu_image_last_success_timestamp_seconds{{{q.img}}}) * 1000\n"
        f"  * on ({q.key}) group_left (reason) (({failing}) * 0 + 1)"
    )
    return [
        row("Needs attention"),
        table(
            "Images not active",
            "Every image whose status is not active, and how long it has been in it (since the"
            " exporter saw the status change, or Gcore's updated_at when it first saw the image;"
            " restarts do not reset it). A transient status turns orange after"
            f" {transitional}, when GcoreGpuImageNotActive warns. Transient statuses clear by"
            " themselves; for killed/deactivated images re-upload or delete the image, for"
            " deleted/pending_delete ones remove the target (runbook: GcoreGpuImageNotActive).",
            [target(top(named(q, not_active, "status")), instant=True, table=True)],
            (12, 8),
            sort_by="Time in status",
            overrides=[
                column("status", "Status", None, **colored_text(STATUS_TEXT_MAP)),
                column(
                    "Value", "Time in status", "s", **{"custom.cellOptions": {"type": "color-text"}}
                ),
                column("name", "Image"),
            ],
            thresholds=steps((None, "green"), (parse_duration(transitional), "orange")),
            transformations=[organize(("Time",), ("name", "status", "Value", *q.key_columns))],
        ),
        table(
            "Locked images",
            "Images held by a Gcore task, how long (since the task was created), the task and"
            " when it finished, if it did. A task in ERROR keeps the image locked until it is"
            " cleaned up, and a lock still held after its task finished is stuck: open a ticket"
            f" with Gcore quoting the task id. Lock age turns orange after {lock_age} (the alert"
            " threshold). An empty task state means the Tasks API gave no answer.",
            [
                target(top(locked), "A", instant=True, table=True),
                target(
                    f"{named(q, with_task(finished, ' * 1000'), task_labels)}\n"
                    f"and on ({q.key}) {top(locked)}",
                    "B",
                    instant=True,
                    table=True,
                ),
            ],
            (12, 8),
            sort_by="Lock age",
            overrides=[
                column("name", "Image"),
                column(
                    "Value #A", "Lock age", "s", **{"custom.cellOptions": {"type": "color-text"}}
                ),
                column("task_state", "Task state", None, **colored_text(TASK_STATE_MAP)),
                column("Value #B", "Task finished", "dateTimeFromNow", noValue="-"),
                column("task_type", "Task type"),
                column("task_error", "Task error"),
                column("task_id", "Task id"),
            ],
            thresholds=steps((None, "green"), (parse_duration(lock_age), "orange")),
            transformations=[
                {"id": "merge", "options": {}},
                organize(
                    ("Time",),
                    (
                        *("name", "Value #A", "task_type", "task_state", "Value #B"),
                        *("task_error", "task_id", *q.key_columns),
                    ),
                ),
            ],
        ),
        table(
            "Images failing to fetch",
            "Images whose last fetch failed, the most frequent error of the last 15 minutes and"
            " when a fetch last succeeded ('never' if it never did). not_found: the image was"
            " deleted or the target is wrong (remove it). unauthorized/forbidden: fix the API key"
            " or its permissions. rate_limited: raise the interval or lower the concurrency."
            " server_error/timeout/connection: Gcore or the network is unwell, usually temporary."
            " An image without info shows its id as name.",
            [
                target(top(named(q, failing, "reason")), "A", instant=True, table=True),
                target(
                    f"{named(q, last_success, 'reason')}\n"
                    f"and on ({q.key}) {top(named(q, failing, 'reason'))}",
                    "B",
                    instant=True,
                    table=True,
                ),
            ],
            (12, 8),
            sort_by="Errors (15m)",
            overrides=[
                column("name", "Image"),
                column("reason", "Most frequent error"),
                column("Value #A", "Errors (15m)", "short"),
                column("Value #B", "Last success", "dateTimeFromNow", noValue="never"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                organize(("Time",), ("name", "reason", "Value #A", "Value #B", *q.key_columns)),
            ],
        ),
        table(
            "Pending and firing alerts",
            "Alerts of this exporter's rules that are pending or firing, with their labels. The"
            " runbook (dashboard link at the top) has a section per alert name saying what to do.",
            [target(f"ALERTS{{{q.alerts}}}", instant=True, table=True)],
            (12, 8),
            sort_by="Severity",
            desc=False,
            overrides=[
                column("alertname", "Alert"),
                column(
                    "severity",
                    "Severity",
                    None,
                    **colored_text(
                        value_map(
                            {
                                "critical": ("critical", "red"),
                                "warning": ("warning", "orange"),
                                "info": ("info", "blue"),
                            }
                        )
                    ),
                ),
                column(
                    "alertstate",
                    "State",
                    None,
                    **colored_text(
                        value_map({"firing": ("firing", "red"), "pending": ("pending", "yellow")})
                    ),
                ),
            ],
            transformations=[
                organize(
                    ("Time", "Value", "__name__", "job"),
                    (
                        "alertname",
                        "severity",
                        "alertstate",
                        *q.key_columns,
                        *("status", "reason", "task_id", "task_type", "kind", "endpoint"),
                        *("code", "instance"),
                    ),
                )
            ],
        ),
        failed_tasks(q),
    ]


def failed_tasks(q: Queries) -> dict[str, Any]:
    """Image tasks that ended in ERROR: not images, so they follow the project and region only."""
    task_key = ", ".join([*q.cluster, "project_id", "region_id", "task_id"])
    when = f"gcore_gpu_image_task_failed_timestamp_seconds{{{q.scope}}}"
    failed = (
        f"max by ({task_key}, task_type, image_id) ({when}) * 1000\n"
        f"  * on ({task_key}) group_left (error)\n"
        f"  topk by ({task_key}) (1, gcore_gpu_image_task_failed_info{{{q.scope}}})"
    )
    return table(
        "Failed image tasks",
        "Failed image tasks: image tasks (uploads: create_image, download_image, upload_*image;"
        " deletes: delete_image) that ended in ERROR within the exporter's failed-task window"
        " (a day by default), latest first: when they failed, where (project and region by name"
        " where the exporter lists them), the task type (a failed upload and a failed delete are"
        " different news), Gcore's error text and the image the task names, if any. A failed"
        " upload leaves no image behind, so it shows only here; failures acknowledged in Gcore"
        " leave. Alert: GcoreGpuImageTaskFailed (runbook: what the errors mean).",
        [target(with_scope_names(q, failed, when), instant=True, table=True)],
        (24, 8),
        sort_by="Failed",
        overrides=[
            column("Value", "Failed", "dateTimeFromNow"),
            column("project_name", "Project"),
            column("region_name", "Region"),
            column("task_type", "Task type"),
            column("error", "Error"),
            column("image_id", "Image id"),
            column("task_id", "Task id"),
        ],
        transformations=[
            organize(
                ("Time",),
                (
                    *("Value", "project_name", "region_name", "task_type", "error", "image_id"),
                    *("task_id", *q.cluster, "project_id", "region_id"),
                ),
            )
        ],
    )


def age_steps(thresholds: Mapping[str, str]) -> dict[str, Any]:
    """Values older than an exporter may be down before GcoreGpuImageExporterDown fires are
    suspect (orange); older than failed fetches may last before GcoreGpuImageFetchFailing fires,
    they are as bad as a failed fetch (red)."""
    suspect, stale = thresholds["exporter_down_for"], thresholds["fetch_failing_for"]
    return steps(
        (None, "green"), (parse_duration(suspect), "orange"), (parse_duration(stale), "red")
    )


LISTING_MAP = value_map(
    {"1": ("ok", "green"), "0": ("failing", "red"), "2": ("no GPU service", "blue")}
)


def discovery(q: Queries, thresholds: Mapping[str, str]) -> list[dict[str, Any]]:
    lk = q.listing_key
    up = f"max by ({lk}) (gcore_exporter_discovery_up{{{q.listing}}})"
    last = f"max by ({lk}) (gcore_exporter_discovery_last_success_timestamp_seconds{{{q.listing}}})"
    # 1 listed, 0 failing, 2 no GPU service: a discovered region that answers 404 is up (no
    # error) but was never listed, the only scopes that are up without a last success.
    state = f"(({up} == 1 unless on ({lk}) {last}) + 1\nor\n{up})"
    images = (
        f"count by ({lk}) (max by ({q.key}, kind)"
        f' (gcore_gpu_image_info{{{q.scope}, kind=~"$kind"}}))'
    )
    account = ", ".join([*q.cluster, "endpoint"])
    account_selector = f'{q.exp}, project_id="", endpoint!="images"'
    failing_for = thresholds["discovery_failing_for"]
    columns = (*q.cluster, "project_id", "region_id", "kind")
    return [
        row("Discovery"),
        stat(
            "Scopes listed",
            "Projects/regions (per kind of GPU image) whose last image listing succeeded on at"
            " least one exporter: PROJECT/REGION targets and those wildcards found. New images"
            " there appear at the next poll.",
            [target(f"count({state} == 1) or vector(0)", instant=True)],
            6,
            thresholds=steps((None, "blue")),
        ),
        stat(
            "Scopes failing",
            "Projects/regions whose last image listing failed on every exporter: their images are"
            f" not refreshed and new ones not seen. After {failing_for} the alert"
            " GcoreGpuImageDiscoveryFailing fires (critical when the exporter has no image of the"
            " scope at all). See 'Listing per scope'.",
            [target(f"count({state} == 0) or vector(0)", instant=True)],
            6,
            thresholds=ANY_IS_BAD,
        ),
        stat(
            "Scopes without GPU service",
            "Projects/regions a wildcard found whose image listing answers 404: the region does"
            " not offer that kind of GPU image. No error, no alert; they are listed again at the"
            " discovery interval, so a region that starts offering it is watched from then on.",
            [target(f"count({state} == 2) or vector(0)", instant=True)],
            6,
            thresholds=steps((None, "blue")),
        ),
        stat(
            "Oldest listing",
            "Time since the selected scope that was listed successfully longest ago (scopes never"
            " listed are in 'Scopes failing'). Orange and red at the same ages as 'Oldest"
            " successful fetch'.",
            [target(f"time() - min({last})", instant=True)],
            6,
            unit="s",
            thresholds=age_steps(thresholds),
        ),
        table(
            "Listing per scope",
            "Every project/region and kind the exporter lists: whether its last listing succeeded"
            " (on any exporter; 'no GPU service' for a region a wildcard found that answers 404),"
            " when one last did ('never' if none did since the exporter started) and how many"
            " images the exporter has of it. A failing scope: check the exporter's log line"
            " 'listing failed' (reason, status, request_id); 403 means the API key may not read"
            " the project, 404 a wrong project or region.",
            [
                target(state, "A", instant=True, table=True),
                target(f"{last} * 1000", "B", instant=True, table=True),
                target(images, "C", instant=True, table=True),
            ],
            (16, 7),
            sort_by="Listing",
            desc=False,
            overrides=[
                column("kind", "Kind"),
                column("Value #A", "Listing", None, **colored_text(LISTING_MAP)),
                column("Value #B", "Last success", "dateTimeFromNow", noValue="never"),
                column("Value #C", "Images", "short", noValue="0"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                organize(("Time",), (*columns, "Value #A", "Value #B", "Value #C")),
            ],
        ),
        table(
            "Account listings",
            "The account-wide listings: projects and regions (only with wildcard targets, to"
            " expand them; a failure keeps the last set) and the tasks of the watched projects"
            " and regions (for 'Failed image tasks', and to list an empty scope at once when an"
            " image task shows up in it). Whether the last one succeeded on"
            f" any exporter and when one last did; failing for {failing_for} fires"
            " GcoreGpuImageDiscoveryFailing.",
            [
                target(
                    f"max by ({account}) (gcore_exporter_discovery_up{{{account_selector}}})",
                    "A",
                    instant=True,
                    table=True,
                ),
                target(
                    f"max by ({account}) (gcore_exporter_discovery_last_success_timestamp_seconds"
                    f"{{{account_selector}}}) * 1000",
                    "B",
                    instant=True,
                    table=True,
                ),
            ],
            (8, 7),
            sort_by="Listing",
            desc=False,
            overrides=[
                column("endpoint", "Listing of"),
                column("Value #A", "Listing", None, **colored_text(LISTING_MAP)),
                column("Value #B", "Last success", "dateTimeFromNow", noValue="never"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                organize(("Time",), (*q.cluster, "endpoint", "Value #A", "Value #B")),
            ],
        ),
    ]


def inventory(q: Queries) -> list[dict[str, Any]]:
    status_code = "\n  or ".join(
        f'(gcore_gpu_image_status{{{q.img}, status="{status}"}} == 1) * {STATUS_CODES[status]}'
        for status in KNOWN_STATUSES
    )
    unknown = "|".join(KNOWN_STATUSES)
    status_code += (
        f'\n  or (gcore_gpu_image_status{{{q.img}, status!~"{unknown}"}} == 1)'
        f" * {STATUS_CODES['unknown']}"
    )
    info_labels = ", ".join(INFO_COLUMNS)

    def with_info(metric: str, scale: str = "") -> str:
        return (
            f"max by ({q.key}, {info_labels}) (\n"
            f"  {metric}{{{q.img}}}{scale}\n"
            f"  * on ({q.scrape_key}) group_left ({info_labels})\n"
            f'  gcore_gpu_image_info{{{q.img}, kind=~"$kind"}}\n'
            ")"
        )

    # The newest images (every image has a creation time), each column for the same images.
    newest = top(with_info("gcore_gpu_image_created_timestamp_seconds", " * 1000"))

    def of_newest(expr: str) -> str:
        return f"{expr}\nand on ({q.key}) {newest}"

    inventory_targets = [
        target(of_newest(with_info(f"gcore_gpu_image_{m}")), ref, instant=True, table=True)
        for ref, m in (("A", "size_bytes"), ("B", "min_disk_bytes"), ("C", "min_ram_bytes"))
    ]
    inventory_targets += [
        target(newest, "D", instant=True, table=True),
        target(
            of_newest(with_info("gcore_gpu_image_updated_timestamp_seconds", " * 1000")),
            "E",
            instant=True,
            table=True,
        ),
        target(of_newest(with_info("gcore_gpu_image_clusters")), "F", instant=True, table=True),
    ]
    tags = f"max by ({q.key}, key, value, read_only) (gcore_gpu_image_tag_info{{{q.img}}})"
    return [
        row("Images"),
        panel(
            "state-timeline",
            "Status timeline",
            "The status of each selected image over time, one row per image. Use it to see when"
            " an upload finished, how long an image sat in a transient status, or when it failed."
            " Gaps mean the exporter had no values (scrape failed, image not found, or stale).",
            [target(top(named(q, status_code)), legend="{{name}}")],
            (24, 8),
            mappings=STATUS_CODE_MAP,
            thresholds=steps((None, "text")),
            custom={"lineWidth": 0, "fillOpacity": 80},
            options={
                "mergeValues": True,
                "showValue": "never",
                "alignValue": "left",
                "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
                "tooltip": {"mode": "single", "sort": "none"},
            },
        ),
        timeseries(
            "Images by status over time",
            "How many images were in each status. A growing failed count needs action (see"
            " 'Images not active'); bumps in transient statuses are uploads in progress.",
            [
                target(
                    f"count by (status) (max by ({q.key}, status) "
                    f"({image(q, 'gcore_gpu_image_status')} == 1))",
                    legend="{{status}}",
                )
            ],
            (12, 8),
            stack=True,
            unit="short",
            overrides=[fixed_color(s, c) for s, c in STATUS_COLORS.items() if s != "unknown"],
        ),
        bargauge(
            "Size per image",
            "Size of each image as Gcore reports it (absent while an upload has not produced a"
            " size). Large images cost storage and take longer to boot from.",
            [
                target(
                    f"sort_desc({top(named(q, f'gcore_gpu_image_size_bytes{{{q.img}}}'))})",
                    legend="{{name}}",
                    instant=True,
                )
            ],
            (12, 8),
            unit="bytes",
            thresholds=steps((None, "blue")),
        ),
        bargauge(
            "Image age",
            "Time since each image was created. Old images (yellow after 90 days, orange after a"
            " year) likely carry outdated GPU drivers and CUDA: consider rebuilding them.",
            [
                target(
                    f"sort_desc({top(named(q, f'gcore_gpu_image_age_seconds{{{q.img}}}'))})",
                    legend="{{name}}",
                    instant=True,
                )
            ],
            (12, 8),
            unit="s",
            thresholds=steps((None, "green"), (90 * 86400, "yellow"), (365 * 86400, "orange")),
        ),
        table(
            "Image tags",
            "Tags (metadata key/value pairs) of the selected images; read_only tags are set by"
            " Gcore. Use them to find an image's owner or purpose.",
            [target(top(named(q, tags, "key, value, read_only")), instant=True, table=True)],
            (12, 8),
            overrides=[column("name", "Image"), column("key", "Key"), column("value", "Tag value")],
            transformations=[
                organize(("Time", "Value"), ("name", "key", "value", "read_only", *q.key_columns))
            ],
        ),
        table(
            "Image inventory",
            "Every selected image with its OS, GPU driver, CUDA version, size, minimum disk and"
            " RAM for an instance, and when it was created and last changed. Use it to check that"
            " images carry the driver/CUDA versions you expect, and how many GPU clusters boot"
            " from each (-: clusters not listed).",
            inventory_targets,
            (24, 9),
            sort_by="Image",
            desc=False,
            overrides=[
                column("name", "Image"),
                column("Value #A", "Size", "bytes", noValue="-"),
                column("Value #B", "Min disk", "bytes"),
                column("Value #C", "Min RAM", "bytes"),
                column("Value #D", "Created", "dateTimeFromNow"),
                column("Value #E", "Updated", "dateTimeFromNow"),
                column("Value #F", "Clusters", "short", noValue="-"),
                column("kind", "Kind"),
                column("gpu_driver_version", "Driver"),
                column("cuda_toolkit_version", "CUDA"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                organize(
                    ("Time",),
                    (*INFO_COLUMNS, *(f"Value #{r}" for r in "ABCDEF"), *q.key_columns),
                ),
            ],
        ),
    ]


CLUSTER_STATUS_COLORS = {
    "active": "green",
    **dict.fromkeys(("creating", "rebooting", "rebuilding", "resizing"), "blue"),
    **{"degraded": "orange", "shutoff": "text", "deleting": "orange", "error": "red"},
}


def gpu_clusters(q: Queries) -> list[dict[str, Any]]:
    """The GPU clusters that boot from the selected images: an image alert's blast radius."""
    used = f"max by ({q.key}) ({image(q, 'gcore_gpu_image_clusters')})"
    clusters = f'{q.scope}, kind=~"$kind"'
    cluster_key = f"{q.scope_key}, cluster_id"
    info = "cluster_name, kind, status, image_id"
    return [
        row("GPU clusters"),
        stat(
            "Cluster listings failing",
            "Projects/regions (per kind) whose last GPU cluster listing failed on every exporter:"
            " their clusters are as last listed, so counts of clusters per image may be out of"
            " date. The exporter's log says why ('cluster listing failed').",
            [
                target(
                    f"count(max by ({q.listing_key}) (gcore_exporter_discovery_up"
                    f'{{{q.scope}, endpoint="clusters", kind=~"$kind"}}) == 0) or vector(0)'
                )
            ],
            8,
            thresholds=ANY_IS_BAD,
        ),
        stat(
            "Images in use vs unused",
            "Selected images that GPU clusters boot from, and those no cluster uses: an unused"
            " image is safe to delete as far as clusters go (gcore_gpu_image_clusters == 0). An"
            " alert on an image in use is critical; see 'Clusters per image'.",
            [
                target(f"count({used} > 0) or vector(0)", "A", "in use"),
                target(f"count({used} == 0) or vector(0)", "B", "unused"),
            ],
            8,
            thresholds=steps((None, "blue")),
        ),
        timeseries(
            "GPU clusters by status",
            "How many GPU clusters of the selected projects and regions are in each status."
            " degraded and error need a look; creating, resizing and rebuilding need their image"
            " to be active (see 'GPU clusters').",
            [
                target(
                    f"count by (status) (max by ({cluster_key}, status) "
                    f"(gcore_gpu_cluster_info{{{clusters}}}))",
                    legend="{{status}}",
                )
            ],
            (16, 8),
            stack=True,
            unit="short",
            overrides=[fixed_color(s, c) for s, c in CLUSTER_STATUS_COLORS.items()],
        ),
        bargauge(
            "Clusters per image",
            "How many GPU clusters boot from each selected image, the 100 most used (0: none,"
            " safe to delete as far as clusters go). An image alert on an image with clusters is"
            " critical: they cannot scale out, rebuild or recover a server while it is not usable.",
            [target(f"sort_desc({top(named(q, used))})", legend="{{name}}", instant=True)],
            (8, 8),
            unit="short",
            thresholds=steps((None, "text"), (1, "blue")),
        ),
        table(
            "GPU clusters",
            "Every GPU cluster of the selected projects and regions: its kind, status, servers"
            " and the image its servers boot from (empty: a virtual cluster whose boot volume"
            " names no image). Bare metal includes clusters of Gcore's managed Kubernetes.",
            [
                target(
                    f"max by ({cluster_key}, {info}) (gcore_gpu_cluster_info{{{clusters}}})",
                    "A",
                    instant=True,
                    table=True,
                ),
                target(
                    f"max by ({cluster_key}) (gcore_gpu_cluster_servers{{{q.scope}}})",
                    "B",
                    instant=True,
                    table=True,
                ),
            ],
            (16, 8),
            sort_by="Cluster",
            desc=False,
            overrides=[
                column("cluster_name", "Cluster"),
                column("Value #B", "Servers", "short"),
                column("image_id", "Image ID"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                organize(
                    ("Time", "Value #A"),
                    ("cluster_name", "kind", "status", "Value #B", "image_id", "cluster_id"),
                ),
            ],
        ),
    ]


def pipeline(q: Queries, thresholds: Mapping[str, str]) -> list[dict[str, Any]]:
    """The image pipeline's SLOs: image tasks that ended, how many finished, how long they took.
    Replicas count the same tasks: each series is maxed over them before it is summed."""
    window, ratio = thresholds["task_slo_window"], float(thresholds["task_success_ratio"])
    slow = parse_duration(thresholds["task_duration_p95"])
    ended = f"gcore_gpu_image_tasks_finished_total{{{q.scope}}}"
    per_scope = f"{q.scope_key}, task_type, state"

    def total(matchers: str, over: str, by: str = "task_type") -> str:
        return (
            f"sum by ({by}) (max by ({per_scope}) "
            f"(increase({ended.removesuffix('}')}{matchers}}}[{over}])))"
        )

    buckets = "gcore_gpu_image_task_duration_seconds_bucket{" + q.scope + ', state="FINISHED"}'
    return [
        row("Image pipeline"),
        timeseries(
            "Image tasks ended by type and state",
            "Image tasks (uploads such as download_image and create_image, deletes) that ended"
            " per interval, by type and state: FINISHED or ERROR, each task counted once when"
            " the exporter first saw it end (docs/metrics.md, Image pipeline). A steady stream"
            " of ERROR is a pipeline that fails: see 'Failed image tasks' for the errors.",
            [
                target(
                    total("", "$__rate_interval", "task_type, state"),
                    legend="{{task_type}} {{state}}",
                )
            ],
            (8, 8),
            unit="short",
            stack=True,
            bars=True,
            overrides=[
                fixed_color(".* FINISHED", "green", regex=True),
                fixed_color(".* ERROR", "red", regex=True),
            ],
        ),
        timeseries(
            f"Image task success ratio ({window})",
            f"The share of the image tasks of each type that ended over the last {window} and"
            f" finished (the others ended in ERROR); red below {ratio:.0%}, where"
            " GcoreGpuImageTaskSuccessRatioLow fires once enough tasks ended. No value while no"
            " task of the type ended.",
            [
                target(
                    total(', state="FINISHED"', window) + "\n/\n" + total("", window),
                    legend="{{task_type}}",
                )
            ],
            (8, 8),
            unit="percentunit",
            thresholds=steps((None, "red"), (ratio, "green")),
            extra_defaults={"min": 0, "max": 1},
        ),
        timeseries(
            f"Image task duration ({window})",
            "Percentiles of the time from creation to end of the image tasks of each type that"
            f" finished over the last {window}, from the exporter's histogram (buckets from 1 min"
            f" to 4 h); orange above {thresholds['task_duration_p95']}, where"
            " GcoreGpuImageTaskDurationHigh fires on the p95. Slow uploads: large images or a"
            " slow source of their URL.",
            [
                target(
                    f"histogram_quantile({quantile}, sum by (le, task_type) (max by"
                    f" ({q.scope_key}, task_type, le) (rate({buckets}[{window}]))))",
                    ref,
                    legend=f"p{round(quantile * 100)} " + "{{task_type}}",
                )
                for ref, quantile in (("A", 0.5), ("B", 0.95))
            ],
            (8, 8),
            unit="s",
            thresholds=steps((None, "green"), (slow, "orange")),
        ),
    ]


def exporter(q: Queries, thresholds: Mapping[str, str]) -> list[dict[str, Any]]:
    suspect, stale = thresholds["exporter_down_for"], thresholds["fetch_failing_for"]
    errors = f"gcore_gpu_image_fetch_errors_total{{{q.img}}}"
    api = f"gcore_exporter_api_requests_total{{{q.exp}}}"
    buckets = f"gcore_exporter_api_request_duration_seconds_bucket{{{q.exp}}}"
    quantiles = [
        target(
            f"histogram_quantile({quantile}, sum by (le, endpoint)"
            f" (rate({buckets}[$__rate_interval])))",
            ref,
            legend=f"p{round(quantile * 100)} " + "{{endpoint}}",
        )
        for ref, quantile in (("A", 0.5), ("B", 0.9), ("C", 0.99))
    ]
    return [
        row("Exporter and Gcore API"),
        stat(
            "Exporter scrape",
            "Whether Prometheus can scrape each exporter (its own `up` metric). DOWN on every"
            " replica means no image alert can fire: check the pod/process and the network"
            " (alerts GcoreGpuImageExporterDown, GcoreGpuImageExporterReplicaDown).",
            [target(f"up{{{q.exp}}}", legend="{{instance}}", instant=True)],
            8,
            unit="none",
            thresholds=steps((None, "red"), (1, "green")),
            mappings=value_map({"0": ("DOWN", "red"), "1": ("UP", "green")}),
        ),
        stat(
            "Time since last poll",
            "Seconds since each exporter finished its last poll round. It should stay below the"
            f" poll interval; orange after {suspect}, red after {stale}: the exporter is stuck or"
            " paused by rate limiting (see its log).",
            [
                target(
                    f"time() - max by ({q.replica_key}) "
                    f"(gcore_exporter_last_poll_timestamp_seconds{{{q.exp}}})",
                    legend="{{instance}}",
                    instant=True,
                )
            ],
            8,
            unit="s",
            thresholds=age_steps(thresholds),
        ),
        stat(
            "Oldest successful fetch",
            "Time since the selected image that was fetched successfully longest ago. Above"
            f" {stale} (red) its values are old: see 'Images failing to fetch'.",
            [
                target(
                    f"time() - min(max by ({q.key}) "
                    f"{image(q, 'gcore_gpu_image_last_success_timestamp_seconds')})",
                    instant=True,
                )
            ],
            8,
            unit="s",
            thresholds=age_steps(thresholds),
        ),
        timeseries(
            "Fetch failures by reason",
            "Failed image fetches per second by reason, after the exporter's retries (per image,"
            " the replica that failed most, so replicas do not add up). A steady not_found means"
            " a watched image is gone; unauthorized/forbidden a bad API key; rate_limited too many"
            " requests; server_error/timeout/connection trouble at Gcore or on the network.",
            [
                target(
                    f"sum by (reason) (max by ({q.key}, reason) "
                    + of_kind(q, f"rate({errors}[$__rate_interval])")
                    + ")",
                    legend="{{reason}}",
                )
            ],
            (12, 8),
            unit="cps",
            stack=True,
            bars=True,
            overrides=[
                fixed_color("not_found", "purple"),
                fixed_color("unauthorized|forbidden", "red", regex=True),
                fixed_color("rate_limited", "orange"),
            ],
        ),
        bargauge(
            "Fetch failures per image (time range)",
            "Failed fetches of each image during the dashboard's time range, by reason (on the"
            " replica that failed most). Points at the images behind the failures of the panel on"
            " the left.",
            [
                target(
                    f"sort_desc(max by ({q.key}, name, reason) ((max by ({q.key}, reason) "
                    f"(increase(gcore_gpu_image_fetch_errors_total{{{q.img}}}[$__range])) > 0)"
                    f" * on ({q.key}) group_left (name) {q.names}))",
                    legend="{{name}} {{reason}}",
                    instant=True,
                )
            ],
            (12, 8),
            unit="short",
            thresholds=steps((None, "orange")),
            extra_defaults={"decimals": 0},
        ),
        timeseries(
            "API requests by code",
            "Requests the exporter sent to the Gcore API per second, by endpoint and HTTP status"
            " (timeout/connection when no answer came). Red codes are server or network errors,"
            " orange 429 rate limits, yellow other client errors (401/403: API key; 404: image"
            " gone). Retries are included, so this can exceed the fetch failures.",
            [
                target(
                    f"sum by (endpoint, code) (rate({api}[$__rate_interval]))",
                    legend="{{endpoint}} {{code}}",
                )
            ],
            (12, 8),
            unit="reqps",
            stack=True,
            overrides=[
                fixed_color(".* 2\\d\\d", "green", regex=True),
                fixed_color(".* 4\\d\\d", "yellow", regex=True),
                fixed_color(".* 429", "orange", regex=True),  # after 4xx: the last match wins
                fixed_color(".* (5\\d\\d|timeout|connection)", "red", regex=True),
            ],
        ),
        timeseries(
            "API request latency",
            "Latency percentiles of Gcore API requests by endpoint, from the exporter's"
            " histogram. Sustained values near the request timeout lead to timeouts: raise"
            " --timeout or lower --concurrency.",
            quantiles,
            (12, 8),
            unit="s",
        ),
        timeseries(
            "Poll duration",
            "Wall time of each exporter's last poll round. It must stay well below the poll"
            " interval, or rounds are skipped and values get old: lower the number of targets"
            " per exporter, raise --concurrency or the interval.",
            [
                target(
                    f"max by ({q.replica_key}) (gcore_exporter_poll_duration_seconds{{{q.exp}}})",
                    legend="{{instance}}",
                )
            ],
            (12, 8),
            unit="s",
        ),
        timeseries(
            "Monitored images per exporter",
            "How many images each exporter watches (explicit targets plus discovered ones). A"
            " sudden drop means images were deleted; a listing that fails keeps its images (see"
            " 'Listing per scope').",
            [
                target(
                    f"max by ({q.replica_key}) (gcore_exporter_images{{{q.exp}}})",
                    legend="{{instance}}",
                )
            ],
            (12, 8),
            unit="short",
        ),
        timeseries(
            "Exporter memory",
            "Resident memory of each exporter process (the standard process_resident_memory_bytes,"
            " as of its last snapshot). It grows with the number of images watched, about 8 MiB"
            " per 1,000 (docs/deploy.md, Resources): compare it with the pod's memory limit.",
            [
                target(
                    f"max by ({q.replica_key}) (process_resident_memory_bytes{{{q.exp}}})",
                    legend="{{instance}}",
                )
            ],
            (12, 8),
            unit="bytes",
        ),
        timeseries(
            "Exporter CPU",
            "CPU time each exporter process uses per second (cores). Peaks follow poll rounds and"
            " the first scrape after each; a steady high value means too many images per exporter"
            " or a too short interval.",
            [
                target(
                    f"max by ({q.replica_key})"
                    f" (rate(process_cpu_seconds_total{{{q.exp}}}[$__rate_interval]))",
                    legend="{{instance}}",
                )
            ],
            (12, 8),
            unit="short",
        ),
    ]


JOB = 'job=~"$job"'


def _braced(*matchers: str) -> str:
    """`{matchers}` without the empty ones; nothing at all if none is left."""
    kept = ", ".join(m for m in matchers if m)
    return f"{{{kept}}}" if kept else ""


def variables(q: Queries, config: Config, selector: str = "") -> list[dict[str, Any]]:
    image_query = f"query_result({names(q.key, q.scope)})".replace("\n", " ")
    clusters = []
    cluster = ""
    if config.cluster_label:
        clusters.append(
            query_variable(
                "cluster",
                "Cluster",
                f"label_values(gcore_exporter_build_info{_braced(selector)},"
                f" {config.cluster_label})",
            )
        )
        cluster = f'{config.cluster_label}=~"$cluster"'
    # Scopes whose listing never succeeded have no image series, only their discovery health
    # (account-wide listings have no project or region).
    watched = '{__name__=~"gcore_gpu_image_up|gcore_exporter_discovery_up", ' + q.exp
    projects = id_or_name("project", q.exp, f'{watched}, project_id!=""}}', q.cluster)
    regions = id_or_name(
        "region", q.exp, f'{watched}, project_id=~"$project_id", region_id!=""}}', q.cluster
    )
    kinds = (
        '{__name__=~"gcore_gpu_image_info|gcore_exporter_discovery_up", ' + q.scope + ', kind!=""}'
    )
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {"selected": False, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
            "options": [],
            "refresh": 1,
            "regex": "",
            "hide": 0,
            "includeAll": False,
            "multi": False,
        },
        *clusters,
        # All is the jobs listed, not `.*`: `up` of every other job would match that.
        query_variable(
            "job",
            "Job",
            f"label_values(gcore_exporter_build_info{_braced(selector, cluster)}, job)",
            allValue=None,
        ),
        query_variable(
            "instance",
            "Instance",
            f"label_values(up{_braced(selector, cluster, JOB)}, instance)",
        ),
        query_variable(
            "project_id",
            "Project",
            f"query_result({projects})".replace("\n", " "),
            regex='/project_id="(?<value>[^"]+)".*?\\bproject_name="(?<text>[^"]*)"/',
            sort=5,
            description="Projects by name (the value is the project id); a project the exporter"
            " does not list (no wildcard target) shows its id.",
        ),
        query_variable(
            "region_id",
            "Region",
            f"query_result({regions})".replace("\n", " "),
            regex='/region_id="(?<value>[^"]+)".*?\\bregion_name="(?<text>[^"]*)"/',
            sort=5,
            description="Regions of the selected projects by name (the value is the region id).",
        ),
        query_variable(
            "kind",
            "Kind",
            f"label_values({kinds}, kind)",
            description="virtual or baremetal GPU images; an image without info (404, never"
            " fetched) has no kind and shows under any.",
        ),
        query_variable(
            "image",
            "Image",
            image_query,
            regex='/image_id="(?<value>[^"]+)".*?\\bname="(?<text>[^"]*)"/',
            sort=5,
            description="Images by name (the value is the image id, so two images with the"
            " same name stay apart; an image without info shows its id).",
        ),
    ]


def dashboard(config: Config | None = None, selector: str = "") -> dict[str, Any]:
    """The dashboard as data, for `config` (the defaults if None): its colours follow the alert
    thresholds, its queries `selector` (none by default) and the cluster label."""
    config = config or Config()
    q, t = queries(config, selector), config.thresholds
    panels = collapse(
        layout(
            [
                *overview(q),
                *attention(q, t),
                *discovery(q, t),
                *inventory(q),
                *gpu_clusters(q),
                *pipeline(q, t),
                *exporter(q, t),
            ]
        ),
        OPEN_ROWS,
    )
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes gcore-gpu-image-exporter",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *(
                {"type": "panel", "id": kind, "name": name, "version": ""}
                for kind, name in (
                    ("bargauge", "Bar gauge"),
                    ("stat", "Stat"),
                    ("state-timeline", "State timeline"),
                    ("table", "Table"),
                    ("timeseries", "Time series"),
                )
            ),
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "Status, time in status, locks, failed tasks, sizes and fetch health of"
        " Gcore Cloud GPU images (virtual and bare metal), from gcore-gpu-image-exporter.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "title": "Runbook",
                "type": "link",
                "icon": "doc",
                "url": RUNBOOK_URL,
                "targetBlank": True,
                "tooltip": "What to do for each alert",
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "tags": [],
            }
        ],
        "liveNow": False,
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": 39,
        "tags": ["gcore", "gpu", "images", "prometheus"],
        "templating": {"list": variables(q, config, selector)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "Gcore GPU images",
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render(config: Config | None = None, selector: str = "") -> str:
    return json.dumps(dashboard(config, selector), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help=f"where to write, - for stdout (default: {OUTPUT.relative_to(HERE.parent)} and"
        f" {CONFIGMAP_COPY.relative_to(HERE.parent)})",
    )
    add_options(parser)
    args = parser.parse_args(argv)
    config = config_from(parser, args)
    # Unlike the rules, no selector unless asked: the Job variable picks the exporter's job.
    asked = args.selector is not None or args.job is not None
    text = render(config, config.selector if asked else "")
    outputs: list[Path] = [args.output] if args.output else [OUTPUT, CONFIGMAP_COPY]
    if args.check:
        stale = [o for o in outputs if not o.is_file() or o.read_text(encoding="utf-8") != text]
        for output in stale:
            print(
                f"{output} is out of date: run python3 grafana/build_dashboard.py", file=sys.stderr
            )
        return 1 if stale else 0
    if str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    for output in outputs:
        output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
