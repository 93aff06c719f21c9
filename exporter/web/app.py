"""HTTP side: serves the latest snapshot of a source; never calls Gcore and never waits on a poll.

What produces the snapshots is wired elsewhere (`daemon`), so this module knows nothing of polling.
A scraper is a stranger: bodies go out in bounded pieces at the pace the client reads them, a
client that stops reading or never sends its request is dropped after `idle_timeout`, and a client
that hangs up or sends garbage costs a debug line, not an error with a traceback.
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from exporter.identity import DOCS_URL, Identity
from exporter.metrics.exposition import Body, ExpositionCache, wants_gzip, wants_openmetrics
from exporter.metrics.snapshot import SnapshotSource
from exporter.web.basic_auth import Verdict
from exporter.web.config_file import peer_sans
from exporter.web.guard import WebGuard

SOURCE = web.AppKey("source", SnapshotSource)
CACHE = web.AppKey("cache", ExpositionCache)
GUARD = web.AppKey("guard", WebGuard)
IDLE_TIMEOUT = web.AppKey("idle_timeout", float)
LANDING = web.AppKey("landing", str)

DEFAULT_IDLE_TIMEOUT: Final = 75.0  # above the usual 60 s scrape interval, so scrapers keep alive
PIECE: Final = 128 * 1024  # bytes per write: each is above aiohttp's 64 KiB mark, so it drains
PROBES: Final = frozenset({"/healthz", "/readyz"})
_RETRY: Final = {"Retry-After": "1"}

log = structlog.get_logger(__name__)

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>Gcore GPU image exporter</title></head>
<body><h1>Gcore GPU image exporter</h1>
<table>{identity}</table>
<ul><li><a href="{metrics_href}">{metrics}</a>: metrics, cached from the last poll</li>
<li><a href="healthz">/healthz</a>: liveness</li>
<li><a href="readyz">/readyz</a>: ready once the first poll completed</li>
<li><a href="{docs}">Documentation</a></li></ul>
</body></html>
"""
# A page of text and links: nothing on it may run, whatever the web config's headers add.
_LANDING_POLICY = "default-src 'none'"


def landing_page(telemetry_path: str, identity: Identity) -> str:
    """The landing page: who is running, and where the metrics, probes and docs are."""
    rows = {"version": identity.version, "revision": identity.revision, **identity.details()}
    return _LANDING.format(
        identity="".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows.items()
        ),
        metrics=html.escape(telemetry_path),
        metrics_href=html.escape(telemetry_path.removeprefix("/")),
        docs=html.escape(DOCS_URL),
    )


def create_app(
    source: SnapshotSource,
    guard: WebGuard | None = None,
    *,
    protect_probes: bool = False,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    telemetry_path: str = "/metrics",
) -> web.Application:
    """The app, serving the metrics at `telemetry_path`; `guard` (the web config) protects every
    path, probes only with `protect_probes`."""
    guard = guard or WebGuard.load(None)
    app = web.Application(middlewares=[_guarded(guard, protect_probes)])
    app[SOURCE] = source
    app[CACHE] = ExpositionCache()
    app[GUARD] = guard
    app[IDLE_TIMEOUT] = idle_timeout
    app.on_response_prepare.append(_add_headers)
    app[LANDING] = landing_page(telemetry_path, Identity.current())
    app.router.add_get(telemetry_path, metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    return app


def server_options(app: web.Application) -> dict[str, Any]:
    """What `web.run_app` and `web.AppRunner` take for `app`: the idle bound and the quiet log."""
    return {"keepalive_timeout": app[IDLE_TIMEOUT], "logger": ServerLog()}


def _guarded(guard: WebGuard, protect_probes: bool) -> Middleware:
    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        access = guard.refresh()
        if access.sans is not None and not access.sans & peer_sans(
            request.get_extra_info("peercert")
        ):
            # Go refuses the handshake; Python's ssl cannot look at names during it.
            response = web.Response(status=403, text="client certificate not allowed\n")
            response.force_close()
            return response
        if request.path in PROBES and not protect_probes:
            return await handler(request)
        if access.limiter is not None and not access.limiter.allow():
            return web.Response(status=429, text="Too Many Requests\n")
        if access.auth is not None:
            verdict = await access.auth.check(request.headers.get("Authorization"))
            if verdict is Verdict.BUSY:  # says nothing of the password: a guesser learns nothing
                return web.Response(
                    status=429, text="too many password checks waiting\n", headers=_RETRY
                )
            if verdict is not Verdict.ALLOWED:
                return web.Response(
                    status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Basic"}
                )
        return await handler(request)

    return guarded


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(request.app[GUARD].access.headers)


async def metrics(request: web.Request) -> web.StreamResponse:
    snapshot = request.app[SOURCE].current
    body = await request.app[CACHE].get(
        snapshot,
        openmetrics=wants_openmetrics(request.headers.get("Accept", "")),
        gzipped=wants_gzip(request.headers.get("Accept-Encoding", "")),
    )
    headers = {"Content-Type": body.content_type, "Vary": "Accept, Accept-Encoding"}
    if body.gzipped:
        headers["Content-Encoding"] = "gzip"
    response = web.StreamResponse(headers=headers)
    response.content_length = body.size
    await response.prepare(request)
    # A streamed body is ours to withhold from HEAD.
    await _send(request, response, body if request.method != "HEAD" else None)
    return response


async def _send(request: web.Request, response: web.StreamResponse, body: Body | None) -> None:
    """Write `body` in pieces, each waiting until the client has taken most of the last one.

    The transport then holds at most about one piece per connection, however many scrapers are
    slow. A client that takes nothing for `idle_timeout` is cut off.
    """
    sent, idle_timeout = 0, request.app[IDLE_TIMEOUT]
    try:
        for part in body.parts if body is not None else ():
            view = memoryview(part)
            for start in range(0, len(view), PIECE):
                piece = view[start : start + PIECE]
                async with asyncio.timeout(idle_timeout):
                    await response.write(piece)
                sent += len(piece)
        await response.write_eof()
    except ConnectionError:
        log.debug("scrape cut short: the client went away", sent=sent, size=_size(body))
    except TimeoutError:
        log.debug("scrape cut short: the client stopped reading", sent=sent, size=_size(body))
        if request.transport is not None:
            request.transport.abort()


def _size(body: Body | None) -> int:
    return body.size if body is not None else 0


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[SOURCE].current.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="waiting for the first poll\n")


async def landing(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[LANDING],
        content_type="text/html",
        headers={"Content-Security-Policy": _LANDING_POLICY},
    )


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with a malformed request (oversized headers, a bad request line)
    demoted to a debug line without traceback: it is the client's fault, and the traceback would
    quote the request, password and all."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug("bad request refused: %s %s", exc_info.code, type(exc_info).__name__)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)
