"""One `--once` over N discovered images (default 10,000): wall time, API calls, peak RSS.

The fake Gcore API runs in this process; the exporter runs as a child, as users run it, so its peak
RSS is its own. Usage: `python -m bench.once_10k [N] [--locked-every K]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time

from aiohttp import web

from exporter.demo.fake_gcore import FakeGcore, make_image, make_task

KEY = "bench-key"


async def main(images: int, locked_every: int) -> None:
    fake = FakeGcore(api_key=KEY)
    for n in range(images):
        image_id = f"b0000000-0000-4000-8000-{n:012d}"
        fields = {}
        if locked_every and n % locked_every == 0:
            task_id = f"7a5c0000-0000-4000-8000-{n:012d}"
            fake.put_task(make_task(task_id))
            fields["task_id"] = task_id
        fake.put_image(1, 10, make_image(image_id, f"image-{n}", **fields))
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    env = {**os.environ, "GCORE_API_KEY": KEY, "GCORE_BASE_URL": f"http://127.0.0.1:{port}"}
    started = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--once",
        "--target",
        "1/10",
        "--log.format",
        "json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    wall = time.perf_counter() - started
    await runner.cleanup()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    series = sum(1 for line in out.splitlines() if line and not line.startswith(b"#"))
    print(f"images:        {images} (1 in {locked_every or 'none'} locked)")
    print(f"exit status:   {child.returncode}")
    print(f"wall time:     {wall:.2f} s (process start to exit)")
    print(
        f"API calls:     {len(fake.requests)} "
        f"({fake.count('/images?')} list pages, {fake.count('/tasks/')} task lookups)"
    )
    print(f"peak RSS:      {peak_kib / 1024:.1f} MiB")
    print(f"exposition:    {len(out) / 2**20:.1f} MiB, {series} samples")
    if child.returncode != 0:
        print(err.decode()[-2000:], file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", nargs="?", type=int, default=10_000)
    parser.add_argument("--locked-every", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.images, args.locked_every))
