#!/usr/bin/env python3
"""Render the alert rules of the Gcore GPU image exporter (stdlib and PyYAML only).

`rules.yaml` beside this file is the default output and `../prometheus-operator/prometheusrule.yaml`
the default output of `--format prometheusrule`. Change thresholds with `--set NAME=DURATION` or
scale all of them with `--scale FACTOR`; from Python: `render({"lock_age": "30s"})` or
`render(scaled(1 / 60))`. The thresholds' defaults live in `exporter/alerting.py`, which the
dashboard shares. See docs/deploy.md.

The alerts are data (`ALERTS`), mixin style: every field is a Prometheus text in which only
`%(name)s` is filled in (a threshold, or a name of `_context`), so Go templates read as Prometheus
sees them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

# Run as a script, only this folder is on sys.path: make the repository's `exporter` importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from exporter.alerting import (  # noqa: E402
    DEFAULTS,
    RUNBOOK_URL,
    TRANSITIONAL_STATUSES,
    add_threshold_options,
    format_duration,
    parse_duration,
    resolve,
    scaled,
    thresholds_from,
)

__all__ = [
    "ALERTS",
    "DEFAULTS",
    "DEFAULT_JOB",
    "DEFAULT_RUNBOOK",
    "Alert",
    "format_duration",
    "groups",
    "main",
    "parse_duration",
    "render",
    "render_prometheus_rule",
    "scaled",
]

DEFAULT_JOB = "gcore-gpu-image-exporter"
DEFAULT_RUNBOOK = RUNBOOK_URL
GROUP = "gcore-gpu-image-exporter"
NAME_LOOKBACK = "1d"

# Template variables an annotation may use; each is defined only where the text refers to it.
# $image is `"NAME" (IMAGE_ID)` from the current info series, else from the last one seen within
# NAME_LOOKBACK (values are withdrawn after a 404 or once stale), else the bare IMAGE_ID.
SELECTOR = (
    "{{- $sel := printf `project_id=%q,region_id=%q,image_id=%q`"
    " $labels.project_id $labels.region_id $labels.image_id -}}\n"
)
IMAGE = (
    "{{- $image := $labels.image_id -}}\n"
    "{{- with printf `topk(1, 2 * gcore_gpu_image_info{%s}"
    " or last_over_time(gcore_gpu_image_info{%s}[" + NAME_LOOKBACK + "]))` $sel $sel | query -}}\n"
    "  {{- $image = printf `%q (%s)` (. | first | label `name`) $labels.image_id -}}\n"
    "{{- end -}}\n"
)
TASK = (
    "{{- $task := `an unknown task` -}}\n"
    "{{- with printf `gcore_gpu_image_task_info{%s}` $sel | query -}}{{- with first . -}}\n"
    "  {{- $task = printf `task %s (%s, state %s)` (label `task_id` .) (label `task_type` .)"
    " (label `task_state` .) -}}\n"
    "{{- end -}}{{- end -}}\n"
)
REASON = (
    "{{- $reason := `unknown` -}}\n"
    "{{- with printf `gcore_gpu_image_last_error_info{%s}` $sel | query -}}\n"
    "  {{- $reason = . | first | label `reason` -}}\n"
    "{{- end -}}\n"
)


class Alert(NamedTuple):
    """One alerting rule. `for_` is a duration (usually `%(..._for)s`); empty or 0s means none."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


ALERTS: tuple[Alert, ...] = (
    Alert(
        "GcoreGpuImageNotActive",
        expr='gcore_gpu_image_status{status!~"%(active_or_transitional)s"} == 1',
        for_="%(failed_for)s",
        severity="critical",
        summary="GPU image {{ $image }} is {{ $labels.status }}",
        description="GPU image {{ $image }} %(where)s has been in the failed status"
        ' "{{ $labels.status }}" for more than %(failed_for)s; no instance can be created from it.',
    ),
    Alert(
        "GcoreGpuImageNotActive",
        expr='gcore_gpu_image_status{status=~"%(transitional)s"} == 1',
        for_="%(transitional_for)s",
        severity="warning",
        summary="GPU image {{ $image }} is stuck in {{ $labels.status }}",
        description="GPU image {{ $image }} %(where)s has been in the transitional status"
        ' "{{ $labels.status }}" for more than %(transitional_for)s.',
    ),
    Alert(
        "GcoreGpuImageLockedTooLong",
        expr="gcore_gpu_image_lock_age_seconds > %(lock_age_seconds)s",
        for_="",  # at once: the expression compares the lock's age already
        severity="warning",
        summary="GPU image {{ $image }} is locked for {{ $value | humanizeDuration }}",
        description="GPU image {{ $image }} %(where)s has been locked by {{ $task }} for"
        " {{ $value | humanizeDuration }} (threshold %(lock_age)s).",
    ),
    Alert(
        "GcoreGpuImageLockedTooLong",
        expr='gcore_gpu_image_task_info{task_state="ERROR"} == 1',
        for_="%(lock_error_for)s",
        severity="critical",
        summary="The task locking GPU image {{ $image }} failed",
        description="Task {{ $labels.task_id }} ({{ $labels.task_type }}) that locks GPU image"
        " {{ $image }} %(where)s has been in state ERROR for more than %(lock_error_for)s;"
        " the image stays locked until the task is cleaned up.",
    ),
    Alert(
        "GcoreGpuImageMissing",
        expr="gcore_gpu_image_up == 0 and ignoring (reason) %(not_found)s",
        for_="%(missing_for)s",
        severity="critical",
        summary="GPU image {{ $image }} no longer exists",
        description="The Gcore API answers 404 Not Found for GPU image {{ $image }} %(where)s,"
        " which the exporter is configured to watch: the image was deleted or the target"
        " is wrong.",
    ),
    Alert(
        "GcoreGpuImageFetchFailing",
        expr="gcore_gpu_image_up == 0 unless ignoring (reason) %(not_found)s",
        for_="%(fetch_failing_for)s",
        severity="warning",
        summary="The exporter cannot fetch GPU image {{ $image }} ({{ $reason }})",
        description="Fetching GPU image {{ $image }} %(where)s from the Gcore API has failed for"
        " more than %(fetch_failing_for)s (last error: {{ $reason }}); its metrics are stale or"
        " withdrawn.",
    ),
    Alert(
        "GcoreGpuImageExporterDown",
        expr="%(up)s == 0 or absent(%(up)s)",
        for_="%(exporter_down_for)s",
        severity="warning",
        summary="The Gcore GPU image exporter is down",
        description="{{ with $labels.instance }}Prometheus cannot scrape the exporter at {{ . }}"
        '{{ else }}Prometheus has no scrape target with job="%(job)s"{{ end }} for more than'
        " %(exporter_down_for)s; no GPU image alert can fire meanwhile.",
    ),
    Alert(
        "GcoreGpuImageApiUnauthorized",
        expr="count without (image_id) (\n"
        '  increase(gcore_gpu_image_fetch_errors_total{reason=~"unauthorized|forbidden"}'
        "[%(api_error_window)s]) > 0\n)",
        for_="%(unauthorized_for)s",
        severity="critical",
        summary="The Gcore API rejects the exporter's API key %(where)s ({{ $labels.reason }})",
        description="Fetches of {{ $value }} GPU image(s) %(where)s failed with"
        ' {{ if eq $labels.reason "forbidden" }}403 Forbidden{{ else }}401 Unauthorized{{ end }}'
        " in the last %(api_error_window)s, for more than %(unauthorized_for)s: the API key is"
        " wrong, expired or lacks permissions.",
    ),
    Alert(
        "GcoreGpuImageApiRateLimited",
        expr="count without (image_id) (\n"
        '  increase(gcore_gpu_image_fetch_errors_total{reason="rate_limited"}'
        "[%(api_error_window)s]) > 0\n)",
        for_="%(rate_limited_for)s",
        severity="warning",
        summary="The Gcore API rate-limits the exporter %(where)s",
        description="Fetches of {{ $value }} GPU image(s) %(where)s failed with"
        " 429 Too Many Requests in the last %(api_error_window)s, for more than"
        " %(rate_limited_for)s: raise the interval or lower the concurrency.",
    ),
)


def _context(thresholds: Mapping[str, str] | None, job: str) -> dict[str, str]:
    """What `%(name)s` may name in ALERTS: every threshold, plus these."""
    t = resolve(thresholds)
    up = f'up{{job="{job}"}}'
    return {
        **t,
        "lock_age_seconds": f"{parse_duration(t['lock_age']):g}",
        "active_or_transitional": "|".join(("active", *TRANSITIONAL_STATUSES)),
        "transitional": "|".join(TRANSITIONAL_STATUSES),
        "not_found": 'gcore_gpu_image_last_error_info{reason="not_found"} == 1',
        "up": up,
        "job": job,
        "where": "in project {{ $labels.project_id }}, region {{ $labels.region_id }}",
    }


def _template(text: str) -> str:
    """`text` preceded by the definitions of the variables it uses."""
    variables = (("$image", IMAGE), ("$task", TASK), ("$reason", REASON))
    used = [part for var, part in variables if var in text]
    return (SELECTOR if used else "") + "".join(used) + text


def _rule(alert: Alert, context: Mapping[str, str], runbook: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr % context}
    duration = alert.for_ % context
    if duration and parse_duration(duration) > 0:
        rule["for"] = duration
    rule["labels"] = {"severity": alert.severity}
    rule["annotations"] = {
        "summary": _template(alert.summary % context),
        "description": _template(alert.description % context),
        "runbook_url": f"{runbook}#{alert.name.lower()}",
    }
    return rule


def groups(
    thresholds: Mapping[str, str] | None = None,
    *,
    job: str = DEFAULT_JOB,
    runbook: str = DEFAULT_RUNBOOK,
) -> list[dict[str, Any]]:
    """The rule groups, as Prometheus and the PrometheusRule `spec.groups` expect them."""
    context = _context(thresholds, job)
    return [{"name": GROUP, "rules": [_rule(alert, context, runbook) for alert in ALERTS]}]


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


def render(
    thresholds: Mapping[str, str] | None = None,
    *,
    job: str = DEFAULT_JOB,
    runbook: str = DEFAULT_RUNBOOK,
) -> str:
    """A Prometheus rule file; `thresholds` overrides any of DEFAULTS."""
    header = "# Generated by deploy/prometheus/render_rules.py: do not edit, see docs/deploy.md.\n"
    return header + _dump({"groups": groups(thresholds, job=job, runbook=runbook)})


def render_prometheus_rule(
    thresholds: Mapping[str, str] | None = None,
    *,
    job: str = DEFAULT_JOB,
    runbook: str = DEFAULT_RUNBOOK,
) -> str:
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
            "spec": {"groups": groups(thresholds, job=job, runbook=runbook)},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_threshold_options(parser)
    parser.add_argument("--job", default=DEFAULT_JOB, help="job label of the exporter's target")
    parser.add_argument("--runbook", default=DEFAULT_RUNBOOK, help="URL of docs/runbook.md")
    parser.add_argument("--format", choices=("rules", "prometheusrule"), default="rules")
    args = parser.parse_args(argv)
    thresholds = thresholds_from(parser, args)
    out = render if args.format == "rules" else render_prometheus_rule
    sys.stdout.write(out(thresholds, job=args.job, runbook=args.runbook))
    return 0


if __name__ == "__main__":
    sys.exit(main())
