"""HTTP side: serves the latest snapshot of a source; never calls Gcore and never waits on a poll.

What produces the snapshots is wired elsewhere (`runtime`), so this module knows nothing of polling.
"""

from __future__ import annotations

from aiohttp import web

from exporter import __version__
from exporter.exposition import ExpositionCache, wants_gzip, wants_openmetrics
from exporter.snapshot import SnapshotSource

SOURCE = web.AppKey("source", SnapshotSource)
CACHE = web.AppKey("cache", ExpositionCache)

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>Gcore GPU image exporter</title></head>
<body><h1>Gcore GPU image exporter {version}</h1>
<ul><li><a href="metrics">/metrics</a>: metrics, cached from the last poll</li>
<li><a href="healthz">/healthz</a>: liveness</li>
<li><a href="readyz">/readyz</a>: ready once the first poll completed</li></ul>
</body></html>
"""


def create_app(source: SnapshotSource) -> web.Application:
    app = web.Application()
    app[SOURCE] = source
    app[CACHE] = ExpositionCache()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    return app


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
    if request.method != "HEAD":  # a streamed body is ours to withhold from HEAD
        for part in body.parts:
            await response.write(part)
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[SOURCE].current.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="waiting for the first poll\n")


async def landing(request: web.Request) -> web.Response:
    return web.Response(text=_LANDING.format(version=__version__), content_type="text/html")
