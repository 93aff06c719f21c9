"""What others would serve for the same exposition, each in a process of its own (honest RSS).

`stock`: prometheus_client's own `make_aiohttp_handler` over a custom collector holding the same
metric families (parsed once from the exporter's text body), rendered at every scrape as stock
exporters do. `static`: aiohttp answering with a prebuilt buffer (and a prebuilt gzip of it), the
physical limit of serving these bytes. Prints the port, then serves until killed.
Usage: `python -m bench.baseline {stock,static} BODY_FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics.exposition import TEXT_CONTENT_TYPE, wants_gzip


class Families:
    """A custom collector that hands out the same families at every collection."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def stock_app(body: bytes) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(text_string_to_metric_families(body.decode())))
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app


def static_app(body: bytes) -> web.Application:
    packed = gzip.compress(body, 5)

    async def metrics(request: web.Request) -> web.Response:
        headers = {"Content-Type": TEXT_CONTENT_TYPE}
        if wants_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=packed, headers=headers)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("stock", "static"))
    parser.add_argument("body", type=Path)
    args = parser.parse_args()
    body = args.body.read_bytes()
    asyncio.run(serve(stock_app(body) if args.kind == "stock" else static_app(body)))


if __name__ == "__main__":
    main()
