"""Serve the fake Gcore API with N images in project 1, region 10; print the port, run until killed.

Benchmarks start it as a separate process so that its CPU and memory stay out of their figures.
Usage: `python -m bench.fake_server N KEY`.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from exporter.fakeapi import FakeGcore, make_image


async def main(images: int, key: str) -> None:
    fake = FakeGcore(api_key=key)
    for n in range(images):
        fake.put_image(1, 10, make_image(f"b0000000-0000-4000-8000-{n:012d}", f"image-{n}"))
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
