"""Who may read the exporter: basic auth, rate limit and allowed client names, from the web config.

The files are re-read when they change (certificates and users rotate without a restart): every
request and every TLS handshake looks at their status first, which costs a few `stat` calls.
The files watched are those the newest reading names, applied or not: a config waiting for its
certificate applies when the certificate appears.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from exporter.web.basic_auth import BasicAuth
from exporter.web.config_file import (
    LoadedWebConfig,
    WebConfig,
    WebConfigRefused,
    allowed_sans,
    as_sent,
    load_web_config,
)

log = structlog.get_logger(__name__)


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
            headers=MappingProxyType(
                {name: as_sent(value) for name, value in config.http_server_config.headers.items()}
            ),
            auth=BasicAuth(config.basic_auth_users) if config.basic_auth_users else None,
            limiter=RateLimiter(limit.interval, limit.burst) if limit.interval > 0 else None,
            sans=None if sans is None else allowed_sans(sans),
        )


class WebGuard:
    """The web config as it is now: TLS context, headers, auth; re-read when its files change.

    `ssl_context` is the listening socket's, and OpenSSL fixes some of a handshake from it (the
    client certificate policy, TLS versions), some from the context a handshake is then handed.
    So an edit of that policy (`TLSServerConfig.policy`, or TLS on or off) is applied whole at
    the next start, never now: until then the previous config stays in force, whole, and an error
    says so. Other edits apply at once: each handshake is handed the certificate, key and client
    CA read last. An edit that does not validate is reported and the previous config stays.
    """

    def __init__(self, path: Path | None, loaded: LoadedWebConfig | None) -> None:
        self._path = path
        self._loaded = loaded
        self._access = WebAccess.of(loaded.config) if loaded else WebAccess()
        self._watched = loaded.files if loaded else None  # the newest reading's, good or not
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
        if self._path is None or self._watched is None or not self._watched.changed():
            return self._access
        try:
            loaded = load_web_config(self._path)
        except WebConfigRefused as exc:
            self._watched = exc.files
            for problem in exc.problems:
                log.error("web config refused, the previous one stays in force", problem=problem)
            return self._access
        self._watched = loaded.files
        assert self._loaded is not None
        changed = _policy_changes(self._loaded, loaded)
        if changed:
            log.error(
                "web config waits for a restart: the previous one stays in force, whole, until "
                "then, as a listening socket keeps its TLS policy",
                changed=changed,
            )
            return self._access
        self._loaded = loaded
        self._access = WebAccess.of(loaded.config)
        log.info("web config reloaded", files=[str(path) for path in loaded.files.paths])
        return self._access

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


def _policy_changes(running: LoadedWebConfig, new: LoadedWebConfig) -> list[str]:
    """What `new` changes of what the listening socket fixes (`["TLS"]`: turned on or off)."""
    if (running.ssl_context is None) != (new.ssl_context is None):
        return ["TLS"]
    if running.ssl_context is None:
        return []
    old, now = running.config.tls_server_config.policy, new.config.tls_server_config.policy
    return [name for name in old if old[name] != now[name]]
