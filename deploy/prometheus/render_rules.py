#!/usr/bin/env python3
"""Render the alert rules of the Gcore GPU image exporter (stdlib and PyYAML only).

`rules.yaml` beside this file is the default output and `../prometheus-operator/prometheusrule.yaml`
the default output of `--format prometheusrule`. Change thresholds with `--set NAME=DURATION` or
scale all of them with `--scale FACTOR`; from Python: `render({"lock_age": "30s"})` or
`render(scaled(1 / 60))`. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from typing import Any

import yaml

DEFAULTS: dict[str, str] = {
    "failed_for": "5m",
    "transitional_for": "1h",
    "lock_age": "30m",
    "lock_error_for": "5m",
    "missing_for": "1m",
    "fetch_failing_for": "15m",
    "exporter_down_for": "5m",
    "api_error_window": "10m",
    "unauthorized_for": "15m",
    "rate_limited_for": "15m",
}
DEFAULT_JOB = "gcore-gpu-image-exporter"
DEFAULT_RUNBOOK = (
    "https://github.com/gcore-gpu-image-exporter/gcore-gpu-image-exporter/blob/main/docs/runbook.md"
)
GROUP = "gcore-gpu-image-exporter"
TRANSITIONAL = ("queued", "saving", "uploading", "importing")
OK_OR_TRANSITIONAL = "|".join(("active", *TRANSITIONAL))
NAME_LOOKBACK = "1d"

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_DURATION = re.compile(r"(\d+)(ms|d|h|m|s)")

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
    f" or last_over_time(gcore_gpu_image_info{{%s}}[{NAME_LOOKBACK}]))` $sel $sel | query -}}}}\n"
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
WHERE = "in project {{ $labels.project_id }}, region {{ $labels.region_id }}"


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as `90s`, `1h30m` or `500ms`."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Prometheus duration such as 30s, 5m or 1h")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for `seconds`, in whole milliseconds (at least 1 if > 0)."""
    millis = max(1, round(seconds * 1000)) if seconds > 0 else 0
    out = ""
    for unit, size in _UNITS.items():
        count, millis = divmod(millis, round(size * 1000))
        if count:
            out += f"{count}{unit}"
    return out or "0s"


def scaled(factor: float, thresholds: Mapping[str, str] = DEFAULTS) -> dict[str, str]:
    """`thresholds` with every duration multiplied by `factor`."""
    return {k: format_duration(parse_duration(v) * factor) for k, v in thresholds.items()}


def _resolve(thresholds: Mapping[str, str] | None) -> dict[str, str]:
    unknown = sorted(set(thresholds or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    merged = {k: parse_duration(v) for k, v in {**DEFAULTS, **(thresholds or {})}.items()}
    empty = [k for k, v in merged.items() if k.endswith("_window") and v <= 0]
    if empty:
        raise ValueError(f"{', '.join(empty)} must be longer than 0s")
    return {k: format_duration(v) for k, v in merged.items()}


def _template(text: str) -> str:
    """`text` preceded by the definitions of the variables it uses."""
    variables = (("$image", IMAGE), ("$task", TASK), ("$reason", REASON))
    used = [part for var, part in variables if var in text]
    return (SELECTOR if used else "") + "".join(used) + text


def groups(
    thresholds: Mapping[str, str] | None = None,
    *,
    job: str = DEFAULT_JOB,
    runbook: str = DEFAULT_RUNBOOK,
) -> list[dict[str, Any]]:
    """The rule groups, as Prometheus and the PrometheusRule `spec.groups` expect them."""
    t = _resolve(thresholds)

    def alert(
        name: str, expr: str, duration: str | None, severity: str, summary: str, description: str
    ) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": name, "expr": expr}
        if duration and parse_duration(duration) > 0:
            rule["for"] = duration
        rule["labels"] = {"severity": severity}
        rule["annotations"] = {
            "summary": _template(summary),
            "description": _template(description),
            "runbook_url": f"{runbook}#{name.lower()}",
        }
        return rule

    not_found = 'gcore_gpu_image_last_error_info{reason="not_found"} == 1'

    def api_errors(matcher: str) -> str:
        return (
            "count without (image_id) (\n"
            f"  increase(gcore_gpu_image_fetch_errors_total{{reason{matcher}}}"
            f"[{t['api_error_window']}]) > 0\n)"
        )

    up = f'up{{job="{job}"}}'
    rules = [
        alert(
            "GcoreGpuImageNotActive",
            f'gcore_gpu_image_status{{status!~"{OK_OR_TRANSITIONAL}"}} == 1',
            t["failed_for"],
            "critical",
            "GPU image {{ $image }} is {{ $labels.status }}",
            f"GPU image {{{{ $image }}}} {WHERE} has been in the failed status"
            f' "{{{{ $labels.status }}}}" for more than {t["failed_for"]};'
            " no instance can be created from it.",
        ),
        alert(
            "GcoreGpuImageNotActive",
            f'gcore_gpu_image_status{{status=~"{"|".join(TRANSITIONAL)}"}} == 1',
            t["transitional_for"],
            "warning",
            "GPU image {{ $image }} is stuck in {{ $labels.status }}",
            f"GPU image {{{{ $image }}}} {WHERE} has been in the transitional status"
            f' "{{{{ $labels.status }}}}" for more than {t["transitional_for"]}.',
        ),
        alert(
            "GcoreGpuImageLockedTooLong",
            f"gcore_gpu_image_lock_age_seconds > {parse_duration(t['lock_age']):g}",
            None,
            "warning",
            "GPU image {{ $image }} is locked for {{ $value | humanizeDuration }}",
            f"GPU image {{{{ $image }}}} {WHERE} has been locked by {{{{ $task }}}} for"
            f" {{{{ $value | humanizeDuration }}}} (threshold {t['lock_age']}).",
        ),
        alert(
            "GcoreGpuImageLockedTooLong",
            'gcore_gpu_image_task_info{task_state="ERROR"} == 1',
            t["lock_error_for"],
            "critical",
            "The task locking GPU image {{ $image }} failed",
            "Task {{ $labels.task_id }} ({{ $labels.task_type }}) that locks GPU image"
            f" {{{{ $image }}}} {WHERE} has been in state ERROR for more than"
            f" {t['lock_error_for']}; the image stays locked until the task is cleaned up.",
        ),
        alert(
            "GcoreGpuImageMissing",
            f"gcore_gpu_image_up == 0 and ignoring (reason) {not_found}",
            t["missing_for"],
            "critical",
            "GPU image {{ $image }} no longer exists",
            f"The Gcore API answers 404 Not Found for GPU image {{{{ $image }}}} {WHERE},"
            " which the exporter is configured to watch: the image was deleted or the target"
            " is wrong.",
        ),
        alert(
            "GcoreGpuImageFetchFailing",
            f"gcore_gpu_image_up == 0 unless ignoring (reason) {not_found}",
            t["fetch_failing_for"],
            "warning",
            "The exporter cannot fetch GPU image {{ $image }} ({{ $reason }})",
            f"Fetching GPU image {{{{ $image }}}} {WHERE} from the Gcore API has failed for"
            f" more than {t['fetch_failing_for']} (last error: {{{{ $reason }}}});"
            " its metrics are stale or withdrawn.",
        ),
        alert(
            "GcoreGpuImageExporterDown",
            f"{up} == 0 or absent({up})",
            t["exporter_down_for"],
            "warning",
            "The Gcore GPU image exporter is down",
            "{{ with $labels.instance }}Prometheus cannot scrape the exporter at {{ . }}"
            f'{{{{ else }}}}Prometheus has no scrape target with job="{job}"{{{{ end }}}}'
            f" for more than {t['exporter_down_for']}; no GPU image alert can fire meanwhile.",
        ),
        alert(
            "GcoreGpuImageApiUnauthorized",
            api_errors('=~"unauthorized|forbidden"'),
            t["unauthorized_for"],
            "critical",
            f"The Gcore API rejects the exporter's API key {WHERE} ({{{{ $labels.reason }}}})",
            f"Fetches of {{{{ $value }}}} GPU image(s) {WHERE} failed with"
            ' {{ if eq $labels.reason "forbidden" }}403 Forbidden{{ else }}401 Unauthorized'
            f"{{{{ end }}}} in the last {t['api_error_window']}, for more than"
            f" {t['unauthorized_for']}: the API key is wrong, expired or lacks permissions.",
        ),
        alert(
            "GcoreGpuImageApiRateLimited",
            api_errors('="rate_limited"'),
            t["rate_limited_for"],
            "warning",
            f"The Gcore API rate-limits the exporter {WHERE}",
            f"Fetches of {{{{ $value }}}} GPU image(s) {WHERE} failed with"
            f" 429 Too Many Requests in the last {t['api_error_window']}, for more than"
            f" {t['rate_limited_for']}: raise the interval or lower the concurrency.",
        ),
    ]
    return [{"name": GROUP, "rules": rules}]


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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=DURATION",
        help=f"override a threshold; names: {', '.join(f'{k} ({v})' for k, v in DEFAULTS.items())}",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every threshold by this factor first"
    )
    parser.add_argument("--job", default=DEFAULT_JOB, help="job label of the exporter's target")
    parser.add_argument("--runbook", default=DEFAULT_RUNBOOK, help="URL of docs/runbook.md")
    parser.add_argument("--format", choices=("rules", "prometheusrule"), default="rules")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    thresholds = scaled(args.scale)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected NAME=DURATION")
        thresholds[name] = value
    out = render if args.format == "rules" else render_prometheus_rule
    try:
        sys.stdout.write(out(thresholds, job=args.job, runbook=args.runbook))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
