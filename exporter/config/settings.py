"""Settings: flags over environment over YAML over defaults, validated once at startup.

Every problem is reported as one line naming the option and the bad value, so an operator can fix a
broken deployment from the pod's log alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import reprlib
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
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
from exporter.sharding import Shard, ordinal_from_pod_name
from exporter.vocabulary import ImageKey, Kind, Scope, Targets, Wildcard

DEFAULT_PORT = 10150
DEFAULT_TIMEOUT = 10.0
DEFAULT_BASE_URL = "https://api.gcore.com"
CONFIG_ENV = "GCORE_EXPORTER_CONFIG"
MAX_CONFIG_BYTES: Final = 1 << 20
"""A config file larger than this is refused (`--config /dev/zero` must not eat the memory)."""
MAX_CONFIG_VALUES: Final = 100_000
"""Most values a config file may hold once YAML aliases are expanded (a "billion laughs")."""

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PROM_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_TARGET = re.compile(rf"^(?:(baremetal):)?(?:(\d+|\*)/(\d+|\*)(?:/({_ID}))?/?|({_ID})|(\*))$")
_TARGET_FORMS = (
    "not a target: write PROJECT/REGION/IMAGE_ID, PROJECT/REGION or IMAGE_ID, "
    "or *, PROJECT/* or */REGION, each optionally after baremetal:"
)


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one human-readable line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
        return BareImage(bare, kind)
    if "*" in (project, region):
        if image_id or project == region:  # `*/*/ID`, `7/*/ID`, `*/*`
            raise ValueError(_TARGET_FORMS)
        return Wildcard(
            None if project == "*" else int(project), None if region == "*" else int(region), kind
        )
    scope = Scope(int(project), int(region), kind)
    return ImageKey(scope, image_id) if image_id else scope


def _check_target(spec: str) -> str:
    parse_target(spec)
    return spec.strip()


TargetSpec = Annotated[
    str, BeforeValidator(lambda v: _check_target(v) if isinstance(v, str) else v)
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GCORE_EXPORTER_", extra="forbid", frozen=True)

    config: Path | None = None
    targets: Annotated[tuple[TargetSpec, ...], NoDecode] = ()
    interval: Duration = 60.0
    timeout: Duration | None = None
    concurrency: int = Field(8, ge=1, le=256)
    stale_after: Duration | None = None
    max_response_size: Size = ByteSize(32 * 2**20)
    listen: str = f":{DEFAULT_PORT}"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] | None = None
    demo: bool = False
    web_config_file: Path | None = None
    protect_probes: bool = False
    api_key: SecretStr | None = Field(None, validation_alias="GCORE_API_KEY")
    api_key_file: Path | None = Field(None, validation_alias="GCORE_API_KEY_FILE")
    base_url: str = Field(DEFAULT_BASE_URL, validation_alias="GCORE_BASE_URL")
    project_id: int | None = Field(None, validation_alias="GCORE_CLOUD_PROJECT_ID", ge=1)
    region_id: int | None = Field(None, validation_alias="GCORE_CLOUD_REGION_ID", ge=1)
    discovery_interval: Duration = 600.0
    task_interval: Duration | None = None
    failed_task_window: Duration = 86400.0
    image_task_pattern: str = "image"
    shard: int | None = Field(None, ge=0)
    total_shards: int = Field(1, ge=1, le=10_000)
    pod_name: str | None = Field(None, validation_alias="POD_NAME")  # Kubernetes' downward API
    clusters: bool = True  # poll the GPU clusters that boot from the watched images
    cluster_interval: Duration | None = None

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

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_from_text(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("image_task_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        listen_address(value)
        return value

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
            "listen": self.listen,
            "log_level": self.log_level,
            "log_format": self.log_format or "auto",
            "base_url": self.base_url,
            "api_key": "**********" if self.api_key or self.api_key_file else None,
            "api_key_file": str(self.api_key_file) if self.api_key_file else None,
            "demo": self.demo,
            "discovery_interval": self.discovery_interval,
            "task_interval": self.effective_task_interval,
            "failed_task_window": self.failed_task_window,
            "image_task_pattern": self.image_task_pattern,
            "web_config_file": str(self.web_config_file) if self.web_config_file else None,
            "protect_probes": self.protect_probes,
            "shard": self.shard_assignment().ordinal,
            "total_shards": self.total_shards,
            "clusters": self.clusters,
            "cluster_interval": cluster_interval(self),
        }


def cluster_interval(settings: Settings) -> float:
    """Time between listings of the GPU clusters: `cluster_interval`, else the interval."""
    return settings.interval if settings.cluster_interval is None else settings.cluster_interval


def _contradictions(settings: Settings) -> list[str]:
    """Options that cannot both hold; a default never contradicts (see effective_timeout)."""
    timeout, stale_after, interval = settings.timeout, settings.stale_after, settings.interval
    problems = []
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    where = f"config: {str(path)!r}"
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{where}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        data = _parse_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    except RecursionError:
        raise ConfigError([f"{where}: nested too deeply"]) from None
    except _TooBig:
        raise ConfigError(
            [f"{where}: more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded"]
        ) from None
    except yaml.YAMLError as exc:
        # Only PyYAML's problem and position: its snippet of the line could quote a secret.
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{where} is not valid YAML: {problem}{at}"]) from None
    except ValueError as exc:  # a scalar PyYAML cannot build: a 5,000-digit integer, 2024-13-01
        raise ConfigError(
            [f"{where} holds a value that cannot be read: {_cut(str(exc))}"]
        ) from None
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


class _TooBig(Exception):
    """The document stands for more than `MAX_CONFIG_VALUES` values."""


def _parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand to too many values.

    Aliases share one object, so loading is cheap; but whatever walks the result (validation,
    an error message) pays for every expanded value: 358 bytes can stand for a billion of them.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise _TooBig
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node, budget: int) -> int:
    """Nodes under `root` with every alias expanded, counted up to `budget` + 1 (then it stops).

    Each distinct node is counted once and remembered, so the work is the size of the document.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = budget + 1  # a node that contains itself expands without end
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > budget:
                break
        sizes[id(node)] = min(total, budget + 1)
        return sizes[id(node)]

    return size(root)


_SECRET_FIELDS = {"api_key", "GCORE_API_KEY"}
# Settings a config file may not hold: secrets, endpoint and mode stay in the environment and flags.
_ENV_ONLY = frozenset(
    {"demo", "api_key", "api_key_file", "base_url", "project_id", "region_id", "pod_name"}
    | {"GCORE_API_KEY", "GCORE_API_KEY_FILE", "GCORE_BASE_URL", "POD_NAME"}
    | {"GCORE_CLOUD_PROJECT_ID", "GCORE_CLOUD_REGION_ID"}
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


# An error line shows a bounded rendering of the bad value: a few items, levels and characters.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = 4
_SHOWN.maxstring = _SHOWN.maxother = 60
_MAX_SHOWN: Final = 100


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _shown(value: Any) -> str:
    """`repr(value)`, bounded in size and in the work it costs whatever the value."""
    return _cut(_SHOWN.repr(value))


def _describe_error(err: Any) -> str:
    location = _cut(".".join(str(part) for part in err["loc"]))
    message = str(err["msg"]).removeprefix("Value error, ")
    if not location:
        return message
    if err["type"] == "extra_forbidden":
        return f"{location}: unknown setting"
    value = "<hidden>" if location in _SECRET_FIELDS else _shown(err.get("input"))
    return f"{location}: {message} (got {value})"
