"""HTTP side: serves the latest snapshot; never calls Gcore and never waits on a poll."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from exporter import __version__
from exporter.config import Settings
from exporter.exposition import ExpositionCache, wants_gzip, wants_openmetrics
from exporter.poller import Poller
from exporter.runtime import open_poller, upstream_for

SETTINGS = web.AppKey("settings", Settings)
POLLER = web.AppKey("poller", Poller)
CACHE = web.AppKey("cache", ExpositionCache)

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>Gcore GPU image exporter</title></head>
<body><h1>Gcore GPU image exporter {version}</h1>
<ul><li><a href="metrics">/metrics</a>: metrics, cached from the last poll</li>
<li><a href="healthz">/healthz</a>: liveness</li>
<li><a href="readyz">/readyz</a>: ready once the first poll completed</li></ul>
</body></html>
"""


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[CACHE] = ExpositionCache()
    app.cleanup_ctx.append(_polling)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    return app


async def _polling(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with upstream_for(settings) as upstream, open_poller(settings, upstream) as poller:
        app[POLLER] = poller
        running = asyncio.create_task(poller.run())
        yield
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def metrics(request: web.Request) -> web.StreamResponse:
    snapshot = request.app[POLLER].snapshot
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
    if request.method != "HEAD":  # a streamed body is ours to withhold from HEAD
        for part in body.parts:
            await response.write(part)
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[POLLER].snapshot.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="waiting for the first poll\n")


async def landing(request: web.Request) -> web.Response:
    return web.Response(text=_LANDING.format(version=__version__), content_type="text/html")
