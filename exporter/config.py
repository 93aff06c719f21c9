"""Settings: flags over environment over YAML over defaults, validated once at startup.

Every problem is reported as one line naming the option and the bad value, so an operator can fix a
broken deployment from the pod's log alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
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

from exporter.sharding import Shard, ordinal_from_pod_name
from exporter.vocabulary import ImageKey, Scope, Targets

DEFAULT_PORT = 10150
DEFAULT_BASE_URL = "https://api.gcore.com"
CONFIG_ENV = "GCORE_EXPORTER_CONFIG"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PROM_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_TARGET = re.compile(rf"^(?:(\d+)/(\d+)(?:/({_ID}))?/?|({_ID}))$")


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


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_target(spec: str) -> str:
    if not _TARGET.match(spec.strip()):
        raise ValueError("not a target: write PROJECT/REGION/IMAGE_ID, PROJECT/REGION or IMAGE_ID")
    return spec.strip()


TargetSpec = Annotated[
    str, BeforeValidator(lambda v: _check_target(v) if isinstance(v, str) else v)
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GCORE_EXPORTER_", extra="forbid", frozen=True)

    config: Path | None = None
    targets: Annotated[tuple[TargetSpec, ...], NoDecode] = ()
    interval: Duration = 60.0
    timeout: Duration = 10.0
    concurrency: int = Field(8, ge=1, le=256)
    stale_after: Duration | None = None
    listen: str = f":{DEFAULT_PORT}"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] | None = None
    demo: bool = False
    api_key: SecretStr | None = Field(None, validation_alias="GCORE_API_KEY")
    api_key_file: Path | None = Field(None, validation_alias="GCORE_API_KEY_FILE")
    base_url: str = Field(DEFAULT_BASE_URL, validation_alias="GCORE_BASE_URL")
    project_id: int | None = Field(None, validation_alias="GCORE_CLOUD_PROJECT_ID", ge=1)
    region_id: int | None = Field(None, validation_alias="GCORE_CLOUD_REGION_ID", ge=1)
    shard: int | None = Field(None, ge=0)
    total_shards: int = Field(1, ge=1, le=10_000)
    pod_name: str | None = Field(None, validation_alias="POD_NAME")  # Kubernetes' downward API

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
        return None if value is None else SecretStr(_clean_key(value.get_secret_value()))

    @model_validator(mode="after")
    def _check_whole(self) -> Settings:
        problems = [] if self.demo else self._source_problems()
        try:
            self.shard_assignment()
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("\n".join(problems))  # load_settings reports one line each
        return self

    def _source_problems(self) -> list[str]:
        """What is missing to reach Gcore: a key and targets (the demo brings its own)."""
        problems = []
        if self.api_key is not None and self.api_key_file is not None:
            problems.append("set only one of GCORE_API_KEY and GCORE_API_KEY_FILE")
        if self.api_key is None and self.api_key_file is None:
            problems.append("an API key is required: set GCORE_API_KEY or GCORE_API_KEY_FILE")
        if not self.targets:
            problems.append("no targets: give --target, GCORE_EXPORTER_TARGETS or `targets`")
        if self.project_id is None or self.region_id is None:
            problems.extend(
                f"target {t!r} has no project/region: write PROJECT/REGION/{t} "
                "or set GCORE_CLOUD_PROJECT_ID and GCORE_CLOUD_REGION_ID"
                for t in self.targets
                if "/" not in t
            )
        return problems

    def shard_assignment(self) -> Shard:
        """`shard` of `total_shards`; without `shard`, the ordinal at the end of `POD_NAME`."""
        total = self.total_shards
        if self.shard is not None:
            if self.shard >= total:
                raise ValueError(
                    f"shard: {self.shard} is not below total_shards {total} "
                    f"(shards are numbered 0 to {total - 1})"
                )
            return Shard(self.shard, total)
        if total == 1:
            return Shard()
        if self.pod_name is None:
            raise ValueError(
                f"total_shards is {total} but no shard is given: set --shard, "
                "GCORE_EXPORTER_SHARD or `shard`, or POD_NAME in a StatefulSet"
            )
        try:
            ordinal = ordinal_from_pod_name(self.pod_name)
        except ValueError as exc:
            raise ValueError(f"POD_NAME: {exc}; set the shard explicitly") from None
        if ordinal >= total:
            raise ValueError(
                f"POD_NAME: {self.pod_name!r} is shard {ordinal}, "
                f"not below total_shards {total}: raise total_shards with the replicas"
            )
        return Shard(ordinal, total)

    @property
    def effective_stale_after(self) -> float:
        return self.stale_after if self.stale_after is not None else 5 * self.interval

    def resolved_targets(self) -> Targets:
        """Explicit images and discovery scopes, deduplicated; images a scope covers are dropped."""
        images: dict[ImageKey, None] = {}
        scopes: dict[Scope, None] = {}
        for spec in self.targets:
            match = _TARGET.match(spec)
            assert match is not None  # validated above
            project, region, image_id, bare = match.groups()
            if bare:
                assert self.project_id is not None
                assert self.region_id is not None
                images[ImageKey(Scope(self.project_id, self.region_id), bare)] = None
            elif image_id:
                images[ImageKey(Scope(int(project), int(region)), image_id)] = None
            else:
                scopes[Scope(int(project), int(region))] = None
        kept = tuple(key for key in images if key.scope not in scopes)
        return Targets(images=kept, scopes=tuple(scopes))

    def read_api_key(self) -> SecretStr:
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is None:
            raise ConfigError(["an API key is required: set GCORE_API_KEY or GCORE_API_KEY_FILE"])
        where = f"GCORE_API_KEY_FILE: {str(self.api_key_file)!r}"
        try:
            text = self.api_key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError([f"{where}: cannot read: {detail or exc}"]) from None
        try:
            return SecretStr(_clean_key(text))
        except ValueError as exc:
            raise ConfigError([f"{where}: {exc}"]) from None

    def describe(self) -> dict[str, Any]:
        """Resolved settings for `--check-config`, secret masked."""
        targets = self.resolved_targets()
        return {
            "targets": [
                f"{k.scope.project_id}/{k.scope.region_id}/{k.image_id}" for k in targets.images
            ]
            + [f"{s.project_id}/{s.region_id}" for s in targets.scopes],
            "interval": self.interval,
            "timeout": self.timeout,
            "concurrency": self.concurrency,
            "stale_after": self.effective_stale_after,
            "listen": self.listen,
            "log_level": self.log_level,
            "log_format": self.log_format or "auto",
            "base_url": self.base_url,
            "api_key": "**********" if self.api_key or self.api_key_file else None,
            "api_key_file": str(self.api_key_file) if self.api_key_file else None,
            "demo": self.demo,
            "shard": self.shard_assignment().ordinal,
            "total_shards": self.total_shards,
        }


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


def _clean_key(key: str) -> str:
    """Strip what secret files and `--from-file` secrets add; refuse what no header can carry."""
    key = key.strip()
    if not key:
        raise ValueError("the API key is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError("the API key contains control characters")
    return key


def _read_yaml(path: Path) -> dict[str, Any]:
    where = f"config: {str(path)!r}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        # Only PyYAML's problem and position: its snippet of the line could quote a secret.
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{where} is not valid YAML: {problem}{at}"]) from None
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


_SECRET_FIELDS = {"api_key", "GCORE_API_KEY"}
# Settings a config file may not hold: secrets, endpoint and mode stay in the environment and flags.
_ENV_ONLY = frozenset(
    {"demo", "api_key", "api_key_file", "base_url", "project_id", "region_id", "pod_name"}
    | {"GCORE_API_KEY", "GCORE_API_KEY_FILE", "GCORE_BASE_URL", "POD_NAME"}
    | {"GCORE_CLOUD_PROJECT_ID", "GCORE_CLOUD_REGION_ID"}
)


def load_settings(**cli: Any) -> Settings:
    """Build settings from flags (`cli`, None meaning unset), the environment and the YAML file."""
    given = {name: value for name, value in cli.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = [line for err in exc.errors() for line in _describe_error(err).splitlines()]
        raise ConfigError(problems) from None


def _describe_error(err: Any) -> str:
    location = ".".join(str(part) for part in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if not location:
        return message
    if err["type"] == "extra_forbidden":
        return f"{location}: unknown setting"
    shown = "<hidden>" if location in _SECRET_FIELDS else repr(err.get("input"))
    return f"{location}: {message} (got {shown})"
