"""The Prometheus exporter-toolkit's web configuration file: TLS, basic auth, headers, rate limit.

A file written for a Go exporter's `--web.config.file` works here unchanged. Unknown keys are an
error, as in the toolkit; what Python's `ssl` cannot do is refused with a line saying so, never
silently weakened. Relative paths are relative to the file's directory, as in the toolkit.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from exporter.config.yaml_file import ConfigError, cut, read_yaml, shown

TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's crypto/tls names (those of tls.CipherSuites(), as the toolkit accepts) to OpenSSL's. TLS 1.3
# suites map to None: neither Go nor OpenSSL's cipher list configures them, so they are accepted
# and have no effect, as in Go.
CIPHERS: Final[Mapping[str, str | None]] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES: Final = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
# The only headers the toolkit lets a file set, with the values it accepts (empty: any value).
HEADERS: Final[Mapping[str, tuple[str, ...]]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
ClientAuth = Literal[
    "",
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",  # the toolkit's old name of RequireAnyClientCert
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
_VERIFYING: Final = {
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_GO_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"  # Go's micro signs
_GO_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _go_duration(value: Any) -> Any:
    """Seconds from a Go duration (`1m30s`, `500ms`) or an integer count of nanoseconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return value
    if isinstance(value, int):
        return value / 1e9
    text = value.strip()
    if text == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_GO_DURATION_PART})+", text):
        raise ValueError("not a Go duration such as 1s, 500ms or 1m30s")
    return sum(float(n) * _GO_UNITS[unit] for n, unit in re.findall(_GO_DURATION_PART, text))


def _known(table: Mapping[str, object], what: str) -> Any:
    def check(name: str) -> str:
        if name not in table:
            raise ValueError(f"unknown {what}: use one of {', '.join(table)}")
        return name

    return AfterValidator(check)


def _bcrypt_hash(value: str) -> str:
    if not _BCRYPT.match(value):
        raise ValueError("not a bcrypt hash")
    return value


def _no_nulls(data: Any) -> Any:
    """`key:` with nothing after it means the default, as in the toolkit's YAML decoding."""
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None}
    return data


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_nulls(cls, data: Any) -> Any:
        return _no_nulls(data)


CipherName = Annotated[str, _known(CIPHERS, "cipher (Go's crypto/tls names)")]
CurveName = Annotated[str, _known(CURVES, "curve")]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]


class TLSServerConfig(_Section):
    cert: str = ""
    key: SecretStr = SecretStr("")
    client_ca: str = ""
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuth = ""
    client_ca_file: str = ""
    client_allowed_sans: tuple[str, ...] | None = None
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: tuple[CipherName, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[CurveName, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether the file asks for TLS at all: the toolkit's rule, any TLS field set."""
        return any(
            (
                self.cert,
                self.key.get_secret_value(),
                self.client_ca,
                self.cert_file,
                self.key_file,
                self.client_ca_file,
                self.client_auth_type,
            )
        )

    @property
    def policy(self) -> dict[str, object]:
        """What a listening socket fixes at startup; only the files behind it are re-read."""
        return {
            "client_auth_type": self.client_auth_type or "NoClientCert",
            "min_version": self.min_version,
            "max_version": self.max_version,
            "cipher_suites": self.cipher_suites,
            "prefer_server_cipher_suites": self.prefer_server_cipher_suites,
            "curve_preferences": self.curve_preferences,
        }

    @model_validator(mode="after")
    def _check(self) -> TLSServerConfig:
        if not self.enabled:
            return self
        problems = []
        if not self.cert_file:
            problems.append(
                "cert_file is required (Python's ssl loads a certificate from a file only, "
                "so an inline `cert` cannot be used)"
                if self.cert
                else "cert_file is required"
            )
        if not self.key_file:
            problems.append(
                "key_file is required (Python's ssl loads a key from a file only, "
                "so an inline `key` cannot be used)"
                if self.key.get_secret_value()
                else "key_file is required"
            )
        auth = self.client_auth_type or "NoClientCert"
        has_ca = bool(self.client_ca_file or self.client_ca)
        if auth in ("RequireAnyClientCert", "RequireClientCert"):
            problems.append(
                f"client_auth_type {auth} (a certificate required but not verified) is not "
                "possible with Python's ssl: use RequireAndVerifyClientCert with client_ca_file"
            )
        elif auth in _VERIFYING and not has_ca:
            problems.append(f"client_auth_type {auth} needs client_ca_file (or client_ca)")
        if has_ca and auth == "NoClientCert":
            problems.append("client CA's have been configured without a client_auth_type")
        if self.client_allowed_sans is not None and auth != "RequireAndVerifyClientCert":
            problems.append(
                "client_allowed_sans requires client_auth_type RequireAndVerifyClientCert"
            )
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            problems.append(
                f"min_version {self.min_version} is above max_version {self.max_version}"
            )
        if len(self.curve_preferences) > 1:
            problems.append(
                "curve_preferences: Python's ssl can restrict the key exchange to one curve only; "
                "list a single curve, or none for OpenSSL's defaults"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


class HTTPServerConfig(_Section):
    http2: bool = True  # accepted; the server speaks HTTP/1.1 only (aiohttp has no HTTP/2)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> HTTPServerConfig:
        problems = []
        for name, value in self.headers.items():
            allowed = HEADERS.get(name)
            if allowed is None:
                problems.append(
                    f"headers: {cut(repr(name))} can not be configured (only {', '.join(HEADERS)})"
                )
            elif allowed and value not in allowed:
                problems.append(f"headers: {name} must be one of {', '.join(allowed)}")
            else:
                problems += _header_value_problems(name, value)
        if problems:
            raise ValueError("\n".join(problems))
        return self


_LINE_BREAKS: Final = str.maketrans("\r\n", "  ")
# What HTTP forbids in a field value (RFC 9110 5.5) once line breaks are spaces, as aiohttp does.
_FORBIDDEN_IN_HEADERS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|[\ud800-\udfff]")


def as_sent(value: str) -> str:
    """A header value as Go's net/http writes it: CR and LF become spaces, the ends trimmed."""
    return value.translate(_LINE_BREAKS).strip(" \t")


def _header_value_problems(name: str, value: str) -> list[str]:
    """Go would send these bytes as they are, and a client would choke; aiohttp cannot send them."""
    found = _FORBIDDEN_IN_HEADERS.search(as_sent(value))
    if found is None:
        return []
    return [
        f"headers: {name} holds the control character U+{ord(found.group()):04X}, "
        "which HTTP does not allow in a header"
    ]


class RateLimit(_Section):
    interval: Annotated[float, BeforeValidator(_go_duration), Field(ge=0, allow_inf_nan=False)] = 0
    burst: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> RateLimit:
        if self.interval > 0 and self.burst < 1:
            raise ValueError("burst must be at least 1 when interval is set (0 refuses everything)")
        return self


class WebConfig(_Section):
    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    basic_auth_users: dict[str, Annotated[str, AfterValidator(_bcrypt_hash)]] = Field(
        default_factory=dict
    )


FileStatus = tuple[int, int, int, int] | None


@dataclass(frozen=True, slots=True)
class Files:
    """The files one reading came from, and their status taken before they were read."""

    paths: tuple[Path, ...]  # the web config file first; a change to any of them means re-read
    seen: tuple[FileStatus, ...]

    def changed(self) -> bool:
        return tuple(file_status(path) for path in self.paths) != self.seen


@dataclass(frozen=True, slots=True)
class LoadedWebConfig:
    """One reading of the file: the model, the server's TLS context, and every file it came from."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None
    files: Files


class WebConfigRefused(ConfigError):
    """A reading that did not validate, with the files it named: when they change, read again."""

    def __init__(self, problems: list[str], files: Files) -> None:
        super().__init__(problems)
        self.files = files


def load_web_config(path: Path) -> LoadedWebConfig:
    """Read, validate and build; raises `WebConfigRefused` with one line per problem."""
    where = f"web config {str(path)!r}"
    files = Files((path,), (file_status(path),))
    try:
        config = _parse(path, where)
    except ConfigError as exc:
        raise WebConfigRefused(exc.problems, files) from None
    tls = config.tls_server_config
    if not tls.enabled:
        return LoadedWebConfig(config, None, files)
    named = [path.parent / n for n in (tls.cert_file, tls.key_file, tls.client_ca_file) if n]
    files = Files((path, *named), (*files.seen, *(file_status(file) for file in named)))
    try:
        context = server_context(tls, path.parent)
    except ValueError as exc:
        raise WebConfigRefused([f"{where}: tls_server_config: {exc}"], files) from None
    return LoadedWebConfig(config, context, files)


def file_status(path: Path) -> FileStatus:
    """What changes when a file is rewritten or a mounted secret's symlink is swapped."""
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino)


def _parse(path: Path, where: str) -> WebConfig:
    data = read_yaml(path, where)
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"{where} must hold a mapping"])
    try:
        return WebConfig.model_validate(data or {})
    except ValidationError as exc:
        problems = [
            f"{where}: {line}" for err in exc.errors() for line in _describe(err).splitlines()
        ]
        raise ConfigError(problems) from None


def _describe(err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    location = cut(".".join(loc))
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if err["type"] == "model_type" or not loc:
        return f"{location or 'the file'}: {message}"
    if loc[0] == "basic_auth_users" or loc[-1] == "key":
        # Never echo these: a plaintext password pasted in place of its hash would be logged.
        hint = " (make one with: htpasswd -nBC 10 '' | tr -d ':\\n')" if len(loc) > 1 else ""
        return f"{location}: {message}{hint}"
    if err["type"].startswith(("value_error", "assertion_error")) and isinstance(
        err.get("input"), dict
    ):
        return "\n".join(f"{location}: {line}" for line in message.splitlines())
    return f"{location}: {message} (got {shown(err.get('input'))})"


def server_context(tls: TLSServerConfig, directory: Path) -> ssl.SSLContext:
    """The server's TLS context for `tls` (enabled and validated); ValueError says what failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    suites = [name for name in (CIPHERS[c] for c in tls.cipher_suites) if name]
    if suites:
        try:
            context.set_ciphers(":".join(suites))
        except ssl.SSLError:
            raise ValueError("cipher_suites: this OpenSSL offers none of them") from None
    for curve in tls.curve_preferences:
        context.set_ecdh_curve(CURVES[curve])
    cert, key = directory / tls.cert_file, directory / tls.key_file
    _readable(cert, "cert_file")
    _readable(key, "key_file")
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (OSError, _EncryptedKeyError) as exc:  # ssl.SSLError is an OSError
        problem = (
            "the key does not match the certificate"
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH"
            else f"not a PEM certificate and unencrypted PEM key ({_reason(exc)})"
        )
        raise ValueError(
            f"cannot load cert_file {str(cert)!r} with key_file {str(key)!r}: {problem}"
        ) from None
    auth = tls.client_auth_type or "NoClientCert"
    if auth in _VERIFYING:
        context.verify_mode = _VERIFYING[auth]
        _load_client_ca(context, tls, directory)
    return context


def _load_client_ca(context: ssl.SSLContext, tls: TLSServerConfig, directory: Path) -> None:
    """The client CA, from the file if both are given (as the toolkit does)."""
    if tls.client_ca_file:
        path = directory / tls.client_ca_file
        _readable(path, "client_ca_file")
        what = f"client_ca_file {str(path)!r}"
        load: dict[str, Any] = {"cafile": path}
    else:
        what, load = "client_ca", {"cadata": tls.client_ca}
    try:
        context.load_verify_locations(**load)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: no PEM certificate found ({_reason(exc)})") from None


class _EncryptedKeyError(Exception):
    reason = "the key is encrypted"


def _no_password() -> str:
    """Called by OpenSSL for an encrypted key instead of prompting on the terminal."""
    raise _EncryptedKeyError


def _readable(path: Path, what: str) -> None:
    """OpenSSL would wait on a FIFO or read `/dev/zero` without end: only regular files pass."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError(f"{what}: {str(path)!r} is not a regular file")
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def peer_sans(peercert: Mapping[str, Any] | None) -> frozenset[str]:
    """A client certificate's DNS, IP, e-mail and URI names, as the toolkit matches them."""
    if not peercert:
        return frozenset()
    names = set()
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "IP Address":
            names.add(_canonical_ip(value))
        elif kind in ("DNS", "email", "URI"):
            names.add(value)
    return frozenset(names)


def allowed_sans(entries: Iterable[str]) -> frozenset[str]:
    return frozenset(_canonical_ip(entry) for entry in entries)


def _canonical_ip(text: str) -> str:
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        return text
