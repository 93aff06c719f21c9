"""What the alert rules, the dashboard and the exporter agree on: statuses, groups, thresholds.

Standard library only: `grafana/build_dashboard.py` and `deploy/prometheus/render_rules.py` import
it with a plain `python3` that has none of the exporter's dependencies. Both take the same
mixin-style configuration (`Config`): the thresholds, a selector of the exporter's series and an
optional cluster label.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

KNOWN_STATUSES: Final = (
    "active",
    "queued",
    "saving",
    "uploading",
    "importing",
    "killed",
    "deleted",
    "pending_delete",
    "deactivated",
)
# Every known status but active is in one group: transitional ones clear by themselves (an alert
# once an image has been in one for `transitional_for`), failed ones need a person (an alert after
# `failed_for`, which an unknown status gets too).
TRANSITIONAL_STATUSES: Final = ("queued", "saving", "uploading", "importing")
FAILED_STATUSES: Final = ("killed", "deleted", "pending_delete", "deactivated")

RUNBOOK_URL: Final = (
    "https://github.com/gcore-gpu-image-exporter/gcore-gpu-image-exporter/blob/main/docs/runbook.md"
)

# The alert thresholds (Prometheus durations); the dashboard colours values by the same ones. A
# name ending in `_for` is a rule's `for`; `transitional_for`, `lock_age` and `stuck_lock_age` are
# compared with times the exporter exports, so they survive restarts of exporter and Prometheus.
DEFAULTS: Final[Mapping[str, str]] = {
    "failed_for": "5m",
    "transitional_for": "1h",
    "transitional_pending_for": "5m",
    "lock_age": "30m",
    "lock_age_for": "5m",
    "lock_error_for": "5m",
    "stuck_lock_age": "10m",
    "task_failed_for": "1m",
    "missing_for": "1m",
    "fetch_failing_for": "15m",
    "discovery_failing_for": "15m",
    "exporter_down_for": "5m",
    "api_error_window": "10m",
    "unauthorized_for": "15m",
    "rate_limited_for": "15m",
    # the image pipeline's SLOs: over `task_slo_window`, once at least `task_slo_min_tasks` ended
    "task_slo_window": "6h",
    "task_success_ratio": "0.9",
    "task_slo_min_tasks": "5",
    "task_duration_p95": "30m",
    "task_slo_for": "15m",
}
NUMBERS: Final = frozenset({"task_success_ratio", "task_slo_min_tasks"})
"""Thresholds that are numbers, not durations: `--scale` leaves them as they are."""

DEFAULT_JOB: Final = "gcore-gpu-image-exporter"
DEFAULT_SELECTOR: Final = f'job="{DEFAULT_JOB}"'
# Labels of the exporter's series that are ours: a cluster label may not take one of these names.
OWN_LABELS: Final = frozenset(
    {
        *("project_id", "region_id", "image_id", "status", "reason", "name", "kind", "endpoint"),
        *("task_id", "task_type", "task_state", "task_error", "error", "code", "state"),
        *("project_name", "region_name", "cluster_id", "cluster_name"),
    }
)
_LABEL: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MATCHER: Final = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR: Final = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*")

_UNITS: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_DURATION: Final = re.compile(r"(\d+)(ms|d|h|m|s)")


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
    """`thresholds` with every duration multiplied by `factor` (numbers stay)."""
    return {
        k: v if k in NUMBERS else format_duration(parse_duration(v) * factor)
        for k, v in thresholds.items()
    }


def _number(name: str, text: str) -> str:
    """A number threshold in its shortest form: a ratio in (0, 1], a count of at least 1."""
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a number") from None
    if name == "task_slo_min_tasks":
        if not number.is_integer() or number < 1:
            raise ValueError(f"{name}: {text!r} is not a whole number of at least 1")
    elif not 0 < number <= 1:
        raise ValueError(f"{name}: {text!r} is not a ratio above 0 and at most 1, such as 0.9")
    return f"{number:g}"


def resolve(thresholds: Mapping[str, str] | None = None) -> dict[str, str]:
    """DEFAULTS overridden by `thresholds`, each in its shortest form; ValueError if one is bad."""
    unknown = sorted(set(thresholds or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    given = {**DEFAULTS, **(thresholds or {})}
    merged = {k: parse_duration(v) for k, v in given.items() if k not in NUMBERS}
    empty = [k for k, v in merged.items() if k.endswith("_window") and v <= 0]
    if empty:
        raise ValueError(f"{', '.join(empty)} must be longer than 0s")
    numbers = {k: _number(k, v) for k, v in given.items() if k in NUMBERS}
    return {k: numbers[k] if k in NUMBERS else format_duration(merged[k]) for k in given}


def check_selector(selector: str) -> str:
    """`selector` stripped, if it is label matchers such as `job="x",namespace=~"a|b"`."""
    text = selector.strip()
    if not _SELECTOR.fullmatch(text):
        raise ValueError(
            f"selector {selector!r} is not label matchers such as"
            ' job="gcore-gpu-image-exporter" or job="x",namespace="monitoring"'
        )
    if "`" in text or "{{" in text or "}}" in text:  # they would end a template's string
        raise ValueError(f"selector {selector!r} may not contain ` or {{{{ or }}}}")
    return text


def check_label_name(name: str, what: str = "cluster label") -> str:
    """`name` if it is a Prometheus label name that is not one of the exporter's own."""
    if not _LABEL.fullmatch(name) or name.startswith("__") or name in OWN_LABELS:
        raise ValueError(f"{what} {name!r} is not a free Prometheus label name")
    return name


@dataclass(frozen=True, slots=True)
class Config:
    """What the rules and the dashboard are rendered for, mixin style. `selector` picks the
    exporter's series (and its `up`); `cluster_label`, when set, is kept through every
    aggregation, so one Prometheus (or Thanos) can watch exporters in several clusters. Every
    field is checked and `thresholds` resolved (ValueError naming the problem)."""

    thresholds: Mapping[str, str] = field(default_factory=dict)  # DEFAULTS overridden by these
    selector: str = DEFAULT_SELECTOR
    cluster_label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", resolve(self.thresholds))
        object.__setattr__(self, "selector", check_selector(self.selector))
        if self.cluster_label:
            check_label_name(self.cluster_label)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of `Config`, so that the rules and the dashboard take the same."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override a threshold (a duration, or a number for {', '.join(sorted(NUMBERS))});"
        f" names: {', '.join(f'{k} ({v})' for k, v in DEFAULTS.items())}",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every threshold by this factor first"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--selector",
        help=f"label matchers of the exporter's series and targets (default: {DEFAULT_SELECTOR})",
    )
    which.add_argument("--job", help="shorthand for --selector 'job=\"JOB\"'")
    parser.add_argument(
        "--cluster-label",
        default="",
        metavar="LABEL",
        help="label that tells clusters apart, kept through every aggregation (default: none)",
    )


def config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The `Config` the options ask for (`--scale`, then `--set`); a bad one exits via `parser`."""
    if args.scale <= 0:
        parser.error("--scale must be positive")
    thresholds = scaled(args.scale)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        thresholds[name] = value
    selector = args.selector
    if selector is None:
        selector = f'job="{args.job}"' if args.job else DEFAULT_SELECTOR
    try:
        return Config(thresholds, selector, args.cluster_label)
    except ValueError as exc:
        parser.error(str(exc))
