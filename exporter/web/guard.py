"""Who may read the exporter: basic auth, rate limit and allowed client names, from the web config.

The files are re-read when they change (certificates and users rotate without a restart): every
request and every TLS handshake looks at their status first, which costs a few `stat` calls.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bcrypt
import structlog

from exporter.config.settings import ConfigError
from exporter.web.config_file import LoadedWebConfig, WebConfig, allowed_sans, load_web_config

log = structlog.get_logger(__name__)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes: one bcrypt at a time, in a thread.

    A verified password is remembered as a keyed digest of user, stored hash and password (the key
    lives only in this object), so later scrapes cost a digest, not ~50 ms of bcrypt; failures are
    never remembered. An unknown user costs a bcrypt check too, so timing does not tell users apart.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name.encode(): hashed.encode() for name, hashed in users.items()}
        self._decoy = next(iter(self._users.values()), b"")
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, bytes] = {}  # user -> digest of the last password verified
        self._bcrypt = asyncio.Lock()

    async def check(self, authorization: str | None) -> bool:
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        digest = hmac.digest(
            self._key,
            b":".join(part.hex().encode() for part in (user, stored or b"", password)),
            hashlib.sha256,
        )
        remembered = self._verified.get(user)
        if (
            stored is not None
            and remembered is not None
            and hmac.compare_digest(remembered, digest)
        ):
            return True
        async with self._bcrypt:
            ok = await asyncio.to_thread(_bcrypt_matches, password, stored or self._decoy)
        if ok and stored is not None:
            self._verified[user] = digest
            return True
        return False


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, as Go's bcrypt refuses too
        return False


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    """User and password as sent (bytes: bcrypt compares bytes), or None if not Basic."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


class RateLimiter:
    """A token bucket like Go's `rate.NewLimiter(rate.Every(interval), burst)`."""

    def __init__(
        self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._interval)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass(frozen=True, slots=True)
class WebAccess:
    """What one reading of the web config asks of each request."""

    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    auth: BasicAuth | None = None
    limiter: RateLimiter | None = None
    sans: frozenset[str] | None = None  # allowed client certificate names, None: any

    @classmethod
    def of(cls, config: WebConfig) -> WebAccess:
        tls, limit = config.tls_server_config, config.rate_limit
        sans = tls.client_allowed_sans
        return cls(
            headers=MappingProxyType(dict(config.http_server_config.headers)),
            auth=BasicAuth(config.basic_auth_users) if config.basic_auth_users else None,
            limiter=RateLimiter(limit.interval, limit.burst) if limit.interval > 0 else None,
            sans=None if sans is None else allowed_sans(sans),
        )


_Signature = tuple[tuple[int, int, int, int] | None, ...]


class WebGuard:
    """The web config as it is now: TLS context, headers, auth; re-read when its files change.

    `ssl_context` is the listening socket's: TLS versions, ciphers, curves and the client
    certificate policy are fixed at startup, while each handshake is handed the certificate, key
    and client CA read last. Edits to what is fixed are reported and wait for a restart; an edit
    that does not validate is reported and the previous configuration stays in force.
    """

    def __init__(self, path: Path | None, loaded: LoadedWebConfig | None) -> None:
        self._path = path
        self._loaded = loaded
        # What the listening socket was built with; only a restart changes it.
        self._fixed = loaded.config.tls_server_config.policy if loaded else None
        self._access = WebAccess.of(loaded.config) if loaded else WebAccess()
        self._seen = self._signature()
        self.ssl_context = loaded.ssl_context if loaded else None
        if self.ssl_context is not None:
            self.ssl_context.sni_callback = self._choose_certificate

    @classmethod
    def load(cls, path: Path | None) -> WebGuard:
        """Validate the file (ConfigError, one line per problem); no file means an open server."""
        return cls(path, load_web_config(path) if path is not None else None)

    @property
    def access(self) -> WebAccess:
        """As of the last `refresh`."""
        return self._access

    def refresh(self) -> WebAccess:
        """Re-read the files if any changed since last time; the access rules now in force."""
        if self._path is None or self._loaded is None:
            return self._access
        signature = self._signature()
        if signature == self._seen:
            return self._access
        self._seen = signature
        try:
            loaded = load_web_config(self._path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error(
                    "web config not reloaded, the previous one stays in force", problem=problem
                )
            return self._access
        self._adopt(loaded)
        return self._access

    def _adopt(self, loaded: LoadedWebConfig) -> None:
        if (self.ssl_context is None) != (loaded.ssl_context is None):
            log.warning("web config: TLS is only turned on or off at restart")
        elif self.ssl_context is not None and loaded.config.tls_server_config.policy != self._fixed:
            log.warning(
                "web config: client_auth_type, TLS versions, ciphers and curves change at restart; "
                "certificates, keys, client CA, users, headers and rate limit changed now"
            )
        self._loaded = loaded
        self._access = WebAccess.of(loaded.config)
        self._seen = self._signature()
        log.info("web config reloaded", files=[str(path) for path in loaded.files])

    def _signature(self) -> _Signature:
        files = self._loaded.files if self._loaded else ()
        return tuple(_status(path) for path in files)

    def _choose_certificate(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: Any
    ) -> None:
        """Called by OpenSSL on every ClientHello (SNI or not): hand over the latest files."""
        self.refresh()
        assert self._loaded is not None
        latest = self._loaded.ssl_context
        if latest is not None and latest is not connection.context:
            connection.context = latest

    def describe(self) -> dict[str, Any]:
        """For `--check-config`: what is protected, never a hash."""
        config = self._loaded.config if self._loaded else WebConfig()
        tls = config.tls_server_config
        return {
            "tls": self.ssl_context is not None,
            "client_auth_type": (tls.client_auth_type or "NoClientCert") if tls.enabled else None,
            "basic_auth_users": sorted(config.basic_auth_users),
            "headers": sorted(config.http_server_config.headers),
            "rate_limit": config.rate_limit.interval > 0,
        }


def _status(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is rewritten or a mounted secret's symlink is swapped."""
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino)
