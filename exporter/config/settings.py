"""Settings: flags over environment over YAML over defaults, validated once at startup.

Every problem is reported as one line naming the option and the bad value, so an operator can fix a
broken deployment from the pod's log alone.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from yarl import URL

from exporter.config.keys import KeyFile, KeySource, clean_key
from exporter.config.options import Option, Reload, env_name, named
from exporter.config.yaml_file import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from exporter.config.yaml_file import MAX_CONFIG_VALUES as MAX_CONFIG_VALUES
from exporter.config.yaml_file import ConfigError as ConfigError
from exporter.config.yaml_file import cut, read_yaml, shown
from exporter.sharding import Shard, ordinal_from_pod_name
from exporter.vocabulary import ImageKey, Kind, Scope, Targets, Wildcard, as_gcore_writes

DEFAULT_PORT = 10150
DEFAULT_TIMEOUT = 10.0
DEFAULT_BASE_URL = "https://api.gcore.com"
CONFIG_ENV = "GCORE_EXPORTER_CONFIG"
DEFAULT_IMAGE_TASK_PATTERN = r"^(create|download|delete)_image$|^upload_\w*image$"
"""The SDK's image task types (`task_list_params.py`), and GPU image uploads (`upload_*image`:
their type is not documented, so the pattern guesses; `task type seen` log lines tell)."""

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PROM_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_TARGET = re.compile(rf"^(?:(baremetal):)?(?:(\d+|\*)/(\d+|\*)(?:/({_ID}))?/?|({_ID})|(\*))$")
_PATH = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$")
_TARGET_FORMS = (
    "not a target: write PROJECT/REGION/IMAGE_ID, PROJECT/REGION or IMAGE_ID, "
    "or *, PROJECT/* or */REGION, each optionally after baremetal:"
)


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or a Prometheus duration such as `30s`, `5m`, `1h30m`, `500ms`."""
    if isinstance(value, bool):  # YAML's `yes` must not become a one-second interval
        raise ValueError("not a duration: use seconds or a Prometheus duration like 30s, 5m, 1h")
    if not isinstance(value, str | int | float):
        return value
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _PROM_DURATION.match(text)
    if not text or match is None:
        raise ValueError("not a duration: use seconds or a Prometheus duration like 30s, 5m, 1h")
    units = ("y", "w", "d", "h", "m", "s", "ms")
    return float(sum(int(n) * _UNITS[u] for n, u in zip(match.groups(), units, strict=True) if n))


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, allow_inf_nan=False)]


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's `yes` must not become a one-byte cap
        raise ValueError("not a size: use bytes or a size like 32MiB, 500kB")
    return value


# Bytes, or a number with a unit: 32MiB, 512KiB, 1GB (pydantic's ByteSize units).
Size = Annotated[ByteSize, BeforeValidator(_refuse_bool), Field(ge=1)]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass(frozen=True, slots=True)
class BareImage:
    """`IMAGE_ID`: an image in the project and region of GCORE_CLOUD_PROJECT_ID/REGION_ID."""

    image_id: str
    kind: Kind = "virtual"


def parse_target(spec: str) -> ImageKey | Scope | Wildcard | BareImage:
    """One target spec, e.g. `7/11/IMAGE_ID`, `7/11`, `IMAGE_ID`, `*`, `7/*`, `baremetal:*/11`."""
    match = _TARGET.match(spec.strip())
    if match is None:
        raise ValueError(_TARGET_FORMS)
    prefix, project, region, image_id, bare, star = match.groups()
    kind: Kind = "baremetal" if prefix else "virtual"
    if star:
        return Wildcard(None, None, kind)
    if bare:
        return BareImage(as_gcore_writes(bare), kind)
    if "*" in (project, region):
        if image_id or project == region:  # `*/*/ID`, `7/*/ID`, `*/*`
            raise ValueError(_TARGET_FORMS)
        return Wildcard(
            None if project == "*" else int(project), None if region == "*" else int(region), kind
        )
    scope = Scope(int(project), int(region), kind)
    return ImageKey(scope, as_gcore_writes(image_id)) if image_id else scope


def _check_target(spec: str) -> str:
    parse_target(spec)
    return spec.strip()


TargetSpec = Annotated[
    str, BeforeValidator(lambda v: _check_target(v) if isinstance(v, str) else v)
]


def _check_proxy_url(value: SecretStr) -> SecretStr:
    proxy_address(value)
    return value


def _check_family_patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
    return value


def _check_tag_keys(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is not None and not value:
        raise ValueError(
            "no tag key given: leave it unset to keep every key, "
            "or deny gcore_gpu_image_tag_info to keep none"
        )
    return value


ProxyUrl = Annotated[SecretStr, AfterValidator(_check_proxy_url)]
# A string is a comma-separated list (as kube-state-metrics' flags); a YAML list is taken as it
# is, so that a regex there may hold a comma.
FamilyPatterns = Annotated[
    tuple[str, ...],
    NoDecode,
    BeforeValidator(_split_commas),
    AfterValidator(_check_family_patterns),
]
TagKeys = Annotated[
    tuple[str, ...] | None,
    NoDecode,
    BeforeValidator(_split_commas),
    AfterValidator(_check_tag_keys),
]


_POLLING, _WEB = "Polling", "Web server"
_IN_PLACE, _NEW_POLLER = Reload.IN_PLACE, Reload.NEW_POLLER
_RESTART, _ENV = Reload.RESTART, Reload.ENVIRONMENT


class _General(BaseSettings):
    """The mode and where the rest comes from."""

    config: Annotated[
        Path | None,
        Option(
            _ENV,
            "YAML file with any of the settings below (at most 1 MiB; read again on SIGHUP)",
            flag="--config",
            group="General",
            metavar="FILE",
        ),
    ] = None
    demo: Annotated[
        bool,
        Option(
            _ENV,
            "run against a built-in simulated Gcore API (no key needed; its own targets)",
            flag="--demo",
            group="General",
            switch=True,
        ),
    ] = False


class _Polling(BaseSettings):
    """What is polled and how often: a change takes a new poller."""

    targets: Annotated[
        tuple[TargetSpec, ...],
        NoDecode,
        Option(
            _NEW_POLLER,
            "PROJECT/REGION/IMAGE_ID, PROJECT/REGION (every image there), IMAGE_ID, * (every GPU "
            "region of every project), PROJECT/* or */REGION; baremetal: before any of them for "
            "bare-metal GPU images; repeatable (comma-separated in the environment)",
            "required",
            flag="--target",
            group=_POLLING,
            metavar="SPEC",
            repeatable=True,
            doc="what to watch, see [Targets](#targets); repeatable, comma-separated in the "
            "environment, a list in YAML",
        ),
    ] = ()
    interval: Annotated[
        Duration,
        Option(
            _NEW_POLLER,
            "time between polls: seconds or a Prometheus duration (30s, 5m, 1h30m)",
            "`60s`",
            flag="--interval",
            group=_POLLING,
            metavar="DURATION",
        ),
    ] = 60.0
    timeout: Annotated[
        Duration | None,
        Option(
            _NEW_POLLER,
            "timeout of one API request; at most the interval",
            "`10s`, or the interval if shorter",
            flag="--timeout",
            group=_POLLING,
            metavar="DURATION",
        ),
    ] = None
    concurrency: Annotated[
        int,
        Field(ge=1, le=256),
        Option(
            _NEW_POLLER,
            "most requests in flight to the API (1 to 256)",
            "`8`",
            flag="--concurrency",
            group=_POLLING,
            metavar="N",
        ),
    ] = 8
    stale_after: Annotated[
        Duration | None,
        Option(
            _IN_PLACE,
            "how long last known values outlive failed fetches; at least the interval",
            "5 x interval",
            flag="--stale-after",
            group=_POLLING,
            metavar="DURATION",
        ),
    ] = None
    max_response_size: Annotated[
        Size,
        Option(
            _NEW_POLLER,
            "largest API answer read, decoded: bytes or a size like 32MiB, 512KiB, 1GB",
            "`32MiB`",
            flag="--max-response-size",
            group=_POLLING,
            metavar="SIZE",
            doc="largest API answer read, counted after gzip decoding: bytes or a size such as "
            "`32MiB`, `512KiB`, `1GB`; a larger answer fails that fetch as `invalid_response`. A "
            "`PROJECT/REGION` of an API that ignores `limit` sends every image in one answer "
            "(about 1 KiB each): raise it then",
        ),
    ] = ByteSize(32 * 2**20)
    discovery_interval: Annotated[
        Duration,
        Option(
            _NEW_POLLER,
            "time between listings of projects and regions that expand wildcard targets",
            "`10m`",
            flag="--discovery-interval",
            group=_POLLING,
            metavar="DURATION",
        ),
    ] = 600.0

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_from_text(cls, value: Any) -> Any:
        return _split_commas(value)


class _Tasks(BaseSettings):
    """The Tasks feed: which tasks are image tasks, how often and how far back they are read."""

    task_interval: Annotated[
        Duration | None,
        Option(
            _NEW_POLLER,
            "time between polls of the failed image tasks",
            "the interval",
            flag="--task-interval",
            group=_POLLING,
            metavar="DURATION",
        ),
    ] = None
    failed_task_window: Annotated[
        Duration,
        Option(
            _NEW_POLLER,
            "how long a failed image task stays in the metrics after it finished",
            "`24h`",
            flag="--failed-task-window",
            group=_POLLING,
            metavar="DURATION",
        ),
    ] = 86400.0
    image_task_pattern: Annotated[
        str,
        Option(
            _NEW_POLLER,
            "task types that count as image tasks: a Python regular expression, searched "
            "anywhere in the type ((?i) for any case)",
            "the SDK's image task types: `create_image`, `download_image`, `delete_image` and "
            "`upload_*image`",
            flag="--image-task-pattern",
            group=_POLLING,
            metavar="REGEX",
        ),
    ] = DEFAULT_IMAGE_TASK_PATTERN
    keep_acknowledged_tasks: Annotated[
        bool,
        Option(
            _NEW_POLLER,
            "keep failed image tasks acknowledged in Gcore, with an acknowledged label",
            "`false`: acknowledged failures leave the metrics",
            flag="--keep-acknowledged-tasks",
            group=_POLLING,
            switch=True,
        ),
    ] = False

    @field_validator("image_task_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class _Sharding(BaseSettings):
    """How exporters share the images."""

    shard: Annotated[
        int | None,
        Field(ge=0),
        Option(
            _RESTART,
            "this exporter's shard, 0 to total_shards - 1: it exports only the images whose id "
            "hashes to it; unset with total_shards above 1, the ordinal at the end of POD_NAME",
            "`0`",
            flag="--shard",
            group="Sharding",
            metavar="I",
            doc="this exporter's shard, `0` to `total_shards - 1`: it exports only the images "
            "whose id hashes to it (see [Sharding](performance.md#sharding)); unset with "
            "`total_shards` above 1, the ordinal at the end of `POD_NAME`",
        ),
    ] = None
    total_shards: Annotated[
        int,
        Field(ge=1, le=10_000),
        Option(
            _RESTART,
            "how many exporters share the images (1 to 10,000)",
            "`1`",
            flag="--total-shards",
            group="Sharding",
            metavar="N",
        ),
    ] = 1
    pod_name: Annotated[
        str | None,
        Field(validation_alias="POD_NAME"),
        Option(
            _ENV,
            "the pod's name from Kubernetes' downward API; in a StatefulSet it ends in "
            "-ORDINAL, the shard when total_shards is above 1 and no shard is set",
            doc="the pod's name from Kubernetes' downward API; in a StatefulSet it ends in "
            "`-ORDINAL`, which is the shard when `total_shards` is above 1 and no shard is set "
            "(a name without a numeric suffix is a configuration error)",
        ),
    ] = None


class _Web(BaseSettings):
    """The HTTP server."""

    listen: Annotated[
        tuple[str, ...],
        NoDecode,
        Option(
            _RESTART,
            "where to serve HTTP, `HOST:PORT` or `:PORT` (every interface); repeatable to listen "
            "on several addresses (comma-separated in the environment)",
            f"`:{DEFAULT_PORT}`",
            flag="--web.listen-address",
            old_flags=("--listen",),
            group=_WEB,
            metavar="HOST:PORT",
            repeatable=True,
        ),
    ] = (f":{DEFAULT_PORT}",)
    telemetry_path: Annotated[
        str,
        Option(
            _RESTART,
            "the path that serves the metrics (not `/`, `/healthz` or `/readyz`)",
            "`/metrics`",
            flag="--web.telemetry-path",
            group=_WEB,
            metavar="PATH",
        ),
    ] = "/metrics"
    web_config_file: Annotated[
        Path | None,
        Option(
            _RESTART,
            "TLS, basic auth, response headers and rate limit of the HTTP server, in the "
            "Prometheus exporter-toolkit format (followed on its own while running)",
            "none: plain HTTP, no auth",
            flag="--web.config.file",
            old_flags=("--web-config-file",),
            group=_WEB,
            metavar="FILE",
            doc="TLS, basic auth, response headers and rate limit of the HTTP server, in the "
            "Prometheus exporter-toolkit format (see [Securing /metrics](security.md)); the file "
            "is followed on its own while running",
        ),
    ] = None
    protect_probes: Annotated[
        bool,
        Option(
            _RESTART,
            "apply the web config's basic auth and rate limit to `/healthz` and `/readyz` too",
            "off: probes open",
            flag="--protect-probes",
            group=_WEB,
            switch=True,
        ),
    ] = False

    @field_validator("listen", mode="before")
    @classmethod
    def _check_listen(cls, value: Any) -> Any:
        addresses = _split_commas(value)
        if isinstance(addresses, list | tuple):
            if not addresses:
                raise ValueError("give at least one HOST:PORT")
            for address in addresses:
                if isinstance(address, str):
                    listen_address(address)
        return addresses

    @field_validator("telemetry_path")
    @classmethod
    def _check_telemetry_path(cls, value: str) -> str:
        if not _PATH.match(value) or value in ("/", "/healthz", "/readyz"):
            raise ValueError("not a path of its own: write /metrics or /some/path")
        return value


class _Logging(BaseSettings):
    """The logs."""

    log_level: Annotated[
        Literal["debug", "info", "warn", "error"],
        Option(
            _IN_PLACE,
            "`debug`, `info`, `warn` or `error` (`warning` is taken for `warn`)",
            "`info`",
            flag="--log.level",
            old_flags=("--log-level",),
            group="Logging",
            metavar="LEVEL",
        ),
    ] = "info"
    log_format: Annotated[
        Literal["logfmt", "json", "console"],
        Option(
            _RESTART,
            "`logfmt` or `json`, with the keys of Prometheus' promslog (`time`, `level`, "
            "`source`, `msg`), or `console`: readable lines for a terminal",
            "`logfmt`",
            flag="--log.format",
            old_flags=("--log-format",),
            group="Logging",
            metavar="FORMAT",
        ),
    ] = "logfmt"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return "warn" if value.lower() == "warning" else value.lower()  # promslog says warn


class _Gcore(BaseSettings):
    """The account and endpoint, from the environment only: secrets stay out of files."""

    api_key: Annotated[
        SecretStr | None,
        Field(validation_alias="GCORE_API_KEY"),
        Option(_ENV, "API key (Gcore portal, *API tokens*)"),
    ] = None
    api_key_file: Annotated[
        Path | None,
        Field(validation_alias="GCORE_API_KEY_FILE"),
        Option(
            _ENV,
            "file holding the key (a mounted secret, at most 8 KiB); followed when it changes on "
            "disk; set only one of the two",
        ),
    ] = None
    base_url: Annotated[
        str,
        Field(validation_alias="GCORE_BASE_URL"),
        Option(
            _ENV,
            "API endpoint; plain `http://` is refused unless the host is a loopback address",
            f"`{DEFAULT_BASE_URL}`",
        ),
    ] = DEFAULT_BASE_URL
    project_id: Annotated[
        int | None,
        Field(validation_alias="GCORE_CLOUD_PROJECT_ID", ge=1),
        Option(_ENV, "project of bare `IMAGE_ID` targets"),
    ] = None
    region_id: Annotated[
        int | None,
        Field(validation_alias="GCORE_CLOUD_REGION_ID", ge=1),
        Option(_ENV, "region of bare `IMAGE_ID` targets"),
    ] = None

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an http(s) URL")
        if url.scheme == "http" and not _is_loopback(url.host):
            raise ValueError(
                "plain http would send the API key in clear text: use https "
                "(http only to a loopback address)"
            )
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else SecretStr(clean_key(value.get_secret_value()))


class _Proxy(BaseSettings):
    """How requests reach Gcore when egress goes through a forward proxy."""

    proxy_url: Annotated[
        ProxyUrl | None,
        Option(
            _NEW_POLLER,
            "forward proxy for every Gcore API request, http://[USER:PASSWORD@]HOST:PORT; "
            "wins over HTTPS_PROXY, HTTP_PROXY and NO_PROXY, which apply without it",
            "`HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` of the environment",
            flag="--proxy-url",
            group="Proxy",
            metavar="URL",
        ),
    ] = None


class _Cardinality(BaseSettings):
    """Which series the exporter renders at all (kube-state-metrics' allow and deny lists)."""

    metric_allowlist: Annotated[
        FamilyPatterns,
        Option(
            _RESTART,
            "comma-separated regexes over gcore_gpu_* family names: export only the families one "
            "matches in full",
            "every family",
            flag="--metric-allowlist",
            group="Cardinality",
            metavar="REGEXES",
            doc="comma-separated regexes (a list in YAML) over `gcore_gpu_*` family names: "
            "export only the families one matches in full; not with `metric_denylist`",
        ),
    ] = ()
    metric_denylist: Annotated[
        FamilyPatterns,
        Option(
            _RESTART,
            "comma-separated regexes over gcore_gpu_* family names: drop the families one "
            "matches in full; not with --metric-allowlist",
            "none",
            flag="--metric-denylist",
            group="Cardinality",
            metavar="REGEXES",
            doc="comma-separated regexes (a list in YAML) over `gcore_gpu_*` family names: drop "
            "the families one matches in full (a denied family is not rendered at all)",
        ),
    ] = ()
    tag_keys: Annotated[
        TagKeys,
        Option(
            _RESTART,
            "comma-separated tag keys kept in gcore_gpu_image_tag_info",
            "every key",
            flag="--tag-keys",
            group="Cardinality",
            metavar="KEYS",
        ),
    ] = None


class _Clusters(BaseSettings):
    """The GPU clusters that boot from the watched images (their blast radius)."""

    clusters: Annotated[
        bool,
        Option(
            _NEW_POLLER,
            "do not list GPU clusters (no gcore_gpu_cluster_* nor gcore_gpu_image_clusters)",
            "on: clusters are listed",
            flag="--no-clusters",
            group="GPU clusters",
            switch=True,
            switch_value=False,
            doc="list the GPU clusters of every watched project/region and kind, and watch the "
            "images they boot from; `--no-clusters` (or `false`) turns it off",
        ),
    ] = True
    cluster_interval: Annotated[
        Duration | None,
        Option(
            _NEW_POLLER,
            "time between listings of the GPU clusters",
            "the interval",
            flag="--cluster-interval",
            group="GPU clusters",
            metavar="DURATION",
        ),
    ] = None


# pydantic orders the fields from the last base to the first: as the groups above.
class Settings(
    _Clusters, _Cardinality, _Proxy, _Gcore, _Logging, _Web, _Sharding, _Tasks, _Polling, _General
):
    """Every setting, each declaring its flag, help and how a reload applies it (`Option`)."""

    model_config = SettingsConfigDict(env_prefix="GCORE_EXPORTER_", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = init_settings().get("config") or os.environ.get(CONFIG_ENV)
        yaml_values = _read_yaml(Path(path)) if path else {}
        return init_settings, env_settings, InitSettingsSource(settings_cls, yaml_values)

    @model_validator(mode="after")
    def _check_whole(self) -> Settings:
        problems = _contradictions(self)
        if not self.demo:  # the demo needs no key and brings its own targets
            problems += _missing(self)
        try:
            self.shard_assignment()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("\n".join(problems))  # load_settings reports one line each
        return self

    def shard_assignment(self) -> Shard:
        """`shard` of `total_shards`; without `shard`, the ordinal at the end of `POD_NAME`."""
        return _shard_of(self)

    @property
    def effective_stale_after(self) -> float:
        return self.stale_after if self.stale_after is not None else 5 * self.interval

    @property
    def effective_task_interval(self) -> float:
        return self.task_interval if self.task_interval is not None else self.interval

    @property
    def effective_timeout(self) -> float:
        """The timeout given, else 10 s or the interval if that is shorter."""
        return self.timeout if self.timeout is not None else min(DEFAULT_TIMEOUT, self.interval)

    def resolved_targets(self) -> Targets:
        """Explicit images, scopes and wildcards, deduplicated; images a scope covers are dropped.

        Images inside scopes that only a wildcard finds are kept: discovery drops them while
        their scope is found, and they are fetched one by one again if it goes.
        """
        return resolve_targets(self.targets, self.project_id, self.region_id)

    def read_api_key(self) -> KeySource:
        """The API key, read once: a key file is then followed for rotations (see `KeyFile`)."""
        if self.api_key is not None:
            return KeySource(self.api_key)
        if self.api_key_file is None:
            raise ConfigError(["an API key is required: set GCORE_API_KEY or GCORE_API_KEY_FILE"])
        try:
            return KeyFile.open(self.api_key_file)
        except ValueError as exc:
            where = f"GCORE_API_KEY_FILE: {str(self.api_key_file)!r}"
            raise ConfigError([f"{where}: {exc}"]) from None

    def describe(self) -> dict[str, Any]:
        """Resolved settings for `--check-config`, secret masked."""
        targets = self.resolved_targets()
        return {
            "targets": [f"{k.scope.spec()}/{k.image_id}" for k in targets.images]
            + [s.spec() for s in targets.scopes]
            + [w.spec() for w in targets.wildcards],
            "interval": self.interval,
            "timeout": self.effective_timeout,
            "concurrency": self.concurrency,
            "stale_after": self.effective_stale_after,
            "max_response_size": int(self.max_response_size),
            "listen": list(self.listen),
            "telemetry_path": self.telemetry_path,
            "log_level": self.log_level,
            "log_format": self.log_format,
            "base_url": self.base_url,
            "api_key": "**********" if self.api_key or self.api_key_file else None,
            "api_key_file": str(self.api_key_file) if self.api_key_file else None,
            "demo": self.demo,
            "discovery_interval": self.discovery_interval,
            "task_interval": self.effective_task_interval,
            "failed_task_window": self.failed_task_window,
            "image_task_pattern": self.image_task_pattern,
            "keep_acknowledged_tasks": self.keep_acknowledged_tasks,
            "web_config_file": str(self.web_config_file) if self.web_config_file else None,
            "protect_probes": self.protect_probes,
            "shard": self.shard_assignment().ordinal,
            "total_shards": self.total_shards,
            **_describe_proxy_and_cardinality(self),
        }


def cluster_interval(settings: Settings) -> float:
    """Time between listings of the GPU clusters: `cluster_interval`, else the interval."""
    return settings.interval if settings.cluster_interval is None else settings.cluster_interval


def _contradictions(settings: Settings) -> list[str]:
    """Options that cannot both hold; a default never contradicts (see effective_timeout)."""
    timeout, stale_after, interval = settings.timeout, settings.stale_after, settings.interval
    problems = []
    if settings.metric_allowlist and settings.metric_denylist:
        problems.append("metric_allowlist and metric_denylist are mutually exclusive: give one")
    if timeout is not None and timeout > interval:
        problems.append(
            f"timeout ({timeout:g}s) is longer than interval ({interval:g}s):"
            " a request could outlast its poll round; shorten it or leave it unset"
        )
    if stale_after is not None and stale_after < interval:
        problems.append(
            f"stale_after ({stale_after:g}s) is shorter than interval ({interval:g}s):"
            " values would be withdrawn at the first failed fetch"
        )
    return problems


def _missing(settings: Settings) -> list[str]:
    """What a real account needs and the settings lack: a key, and targets that name a scope."""
    problems = []
    if settings.api_key is not None and settings.api_key_file is not None:
        problems.append("set only one of GCORE_API_KEY and GCORE_API_KEY_FILE")
    if settings.api_key is None and settings.api_key_file is None:
        problems.append("an API key is required: set GCORE_API_KEY or GCORE_API_KEY_FILE")
    if not settings.targets:
        problems.append("no targets: give --target, GCORE_EXPORTER_TARGETS or `targets`")
    if settings.project_id is None or settings.region_id is None:
        problems.extend(
            f"target {t!r} has no project/region: write {head}{sep}PROJECT/REGION/{image} "
            "or set GCORE_CLOUD_PROJECT_ID and GCORE_CLOUD_REGION_ID"
            for t in settings.targets
            if isinstance(parse_target(t), BareImage)
            for head, sep, image in [t.rpartition(":")]
        )
    return problems


def _shard_of(settings: Settings) -> Shard:
    """`shard` of `total_shards`; without `shard`, the ordinal at the end of `POD_NAME`."""
    total = settings.total_shards
    if settings.shard is not None:
        if settings.shard >= total:
            raise ValueError(
                f"shard: {settings.shard} is not below total_shards {total} "
                f"(shards are numbered 0 to {total - 1})"
            )
        return Shard(settings.shard, total)
    if total == 1:
        return Shard()
    if settings.pod_name is None:
        raise ValueError(
            f"total_shards is {total} but no shard is given: set --shard, "
            "GCORE_EXPORTER_SHARD or `shard`, or POD_NAME in a StatefulSet"
        )
    try:
        ordinal = ordinal_from_pod_name(settings.pod_name)
    except ValueError as exc:
        raise ValueError(f"POD_NAME: {exc}; set the shard explicitly") from None
    if ordinal >= total:
        raise ValueError(
            f"POD_NAME: {settings.pod_name!r} is shard {ordinal}, "
            f"not below total_shards {total}: raise total_shards with the replicas"
        )
    return Shard(ordinal, total)


def resolve_targets(specs: Iterable[str], project_id: int | None, region_id: int | None) -> Targets:
    """`Settings.resolved_targets`, for target specs already validated."""
    images: dict[ImageKey, None] = {}
    scopes: dict[Scope, None] = {}
    wildcards: dict[Wildcard, None] = {}
    for spec in specs:
        target = parse_target(spec)
        if isinstance(target, BareImage):
            assert project_id is not None  # validated with the settings
            assert region_id is not None
            scope = Scope(project_id, region_id, target.kind)
            images[ImageKey(scope, target.image_id)] = None
        elif isinstance(target, ImageKey):
            images[target] = None
        elif isinstance(target, Scope):
            scopes[target] = None
        else:
            wildcards[target] = None
    kept = tuple(key for key in images if key.scope not in scopes)
    return Targets(images=kept, scopes=tuple(scopes), wildcards=tuple(wildcards))


def listen_address(value: str) -> tuple[str | None, int]:
    """`HOST:PORT`, `[IPV6]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("not HOST:PORT with a port from 0 to 65535")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port_text)


def proxy_address(url: SecretStr) -> tuple[URL, str | None]:
    """The proxy's URL without credentials, and its `Proxy-Authorization` header if it has any.

    The credentials leave the URL so that no error, log line or repr that shows where requests go
    can show them.
    """
    try:
        parsed = URL(url.get_secret_value())
        host, port = parsed.host, parsed.port  # yarl checks the port lazily
    except ValueError:
        raise ValueError("not a URL") from None
    if parsed.scheme not in ("http", "https") or not host or port is None:
        raise ValueError("not an http(s) URL of a proxy: write http://HOST:PORT")
    if parsed.path not in ("", "/") or parsed.query_string or parsed.fragment:
        raise ValueError("a proxy URL has no path, query or fragment: write http://HOST:PORT")
    header = None
    if parsed.user is not None:
        pair = f"{parsed.user}:{parsed.password or ''}".encode()
        header = f"Basic {base64.b64encode(pair).decode('ascii')}"
    return parsed.with_user(None).with_path(""), header


def _describe_proxy_and_cardinality(settings: Settings) -> dict[str, Any]:
    """`describe`'s part of them: the proxy's credentials masked (None: the environment's)."""
    proxy = None
    if settings.proxy_url is not None:
        address, header = proxy_address(settings.proxy_url)
        proxy = str(address.with_user("****") if header else address)
    keys = settings.tag_keys
    return {
        "proxy_url": proxy,
        "metric_allowlist": list(settings.metric_allowlist),
        "metric_denylist": list(settings.metric_denylist),
        "tag_keys": "every key" if keys is None else list(keys),
    }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    where = f"config: {str(path)!r}"
    data = read_yaml(path, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{where} must hold a mapping of settings"])
    if "config" in data:
        raise ConfigError([f"{where}: `config` cannot be set inside a config file"])
    refused = sorted(str(k) for k in data if str(k) in _ENV_ONLY)
    if refused:
        raise ConfigError(
            [f"{where}: {key} belongs in the environment, not a config file" for key in refused]
        )
    return data


_SECRET_FIELDS = {"api_key", "GCORE_API_KEY", "proxy_url"}
# Settings a config file may not hold: secrets, endpoint and mode stay in the environment and flags.
_ENV_ONLY = frozenset(
    name
    for setting in named(Settings, Reload.ENVIRONMENT)
    for name in (setting, env_name(Settings, setting))
)


def load_settings(*, again: bool = False, **cli: Any) -> Settings:
    """Build settings from flags (`cli`, None meaning unset), the environment and the YAML file.

    `again` (a reload) refuses a config file that is no regular file: `<(...)` or a FIFO was
    read at startup and cannot be read a second time (nor waited on).
    """
    given = {name: value for name, value in cli.items() if value is not None}
    if again:
        _check_rereadable(given.get("config") or os.environ.get(CONFIG_ENV))
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = [line for err in exc.errors() for line in _describe_error(err).splitlines()]
        raise ConfigError(problems) from None


def _check_rereadable(path: str | Path | None) -> None:
    if not path:
        return
    try:
        regular = stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return  # reading it says what is wrong
    if not regular:
        raise ConfigError([f"config: {str(path)!r} is not a regular file: it cannot be re-read"])


def _describe_error(err: Any) -> str:
    location = cut(".".join(str(part) for part in err["loc"]))
    message = str(err["msg"]).removeprefix("Value error, ")
    if not location:
        return message
    if err["type"] == "extra_forbidden":
        return f"{location}: unknown setting"
    value = "<hidden>" if location in _SECRET_FIELDS else shown(err.get("input"))
    return f"{location}: {message} (got {value})"
