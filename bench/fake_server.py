"""Serve the fake Gcore API with N images in project 1, region 10, until killed.

Benchmarks start it as a separate process so that its CPU and memory stay out of their figures. It
prints two ports on one line: the API's, and a stats port whose `GET /requests` answers how many
API requests have come so far (counted apart, so that asking does not count).
Usage: `python -m bench.fake_server N KEY [--locked-every K]`.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from exporter.demo.fake_gcore import FakeGcore, make_image, make_task

PROJECT, REGION = 1, 10


def image_id(n: int) -> str:
    return f"b0000000-0000-4000-8000-{n:012d}"


def populate(fake: FakeGcore, images: int, locked_every: int) -> None:
    """Images `image_id(0)` …; one in `locked_every` held by a task of its own (0: none)."""
    for n in range(images):
        fields = {}
        if locked_every and n % locked_every == 0:
            task_id = f"7a5c0000-0000-4000-8000-{n:012d}"
            fake.put_task(make_task(task_id))
            fields["task_id"] = task_id
        fake.put_image(PROJECT, REGION, make_image(image_id(n), f"image-{n}", **fields))


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def main(images: int, key: str, locked_every: int) -> None:
    fake = FakeGcore(api_key=key)
    populate(fake, images, locked_every)

    async def requests(_: web.Request) -> web.Response:
        return web.Response(text=str(len(fake.requests)))

    stats = web.Application()
    stats.router.add_get("/requests", requests)
    (_, api_port), (_, stats_port) = await serve(fake.app()), await serve(stats)
    print(api_port, stats_port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", type=int)
    parser.add_argument("key")
    parser.add_argument("--locked-every", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.images, args.key, args.locked_every))
