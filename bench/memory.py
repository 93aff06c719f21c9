"""Where the bytes go: a tracemalloc profile of one process holding N discovered images.

The process polls N images (the fake API in another process, so its memory does not count) for
two rounds, publishes, and builds every body (text, OpenMetrics, gzip), as a scraped exporter
does. Then it reports what is alive, by the line that allocated it and by what it is for: the
exposition's bytes (the blocks), the gzip deflates kept for reuse, the per-image state, and the
rest (modules, the HTTP client, buffers). The peak is traced too: what a round and a publication
hold at once on top of what stays. Usage: `python -m bench.memory [N] [--top K]`.
"""

from __future__ import annotations

import argparse
import asyncio
import linecache
import resource
import tracemalloc
from collections import Counter
from pathlib import Path

from pydantic import SecretStr

from bench.loop_lag import KEY, serve_fake
from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_scheduler
from exporter.logs import configure_logging
from exporter.metrics.exposition import ExpositionCache
from exporter.vocabulary import Scope, Targets

MIB = 2**20
ROOT = Path(__file__).resolve().parent.parent
PURPOSES = {  # the module that allocated it: what the bytes are for
    "exporter/metrics/blocks.py": "exposition bytes (blocks)",
    "exporter/metrics/families.py": "statuses, and chunks rendered but not yet folded",
    "exporter/metrics/exposition.py": "gzip bodies, and the deflates kept for reuse",
    "exporter/metrics/image_store.py": "per-image state",
    "exporter/vocabulary.py": "per-image state",
}


def purpose(filename: str) -> str:
    relative = Path(filename).resolve()
    if not relative.is_relative_to(ROOT / "exporter"):
        return "libraries and interpreter (modules, HTTP client, JSON, buffers)"
    return PURPOSES.get(relative.relative_to(ROOT).as_posix(), "other exporter modules")


def where(frame: tracemalloc.Frame) -> str:
    try:
        name = Path(frame.filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        name = Path(frame.filename).name
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{name}:{frame.lineno}  {code[:60]}"


async def profile(port: int, images: int, top: int) -> None:
    settings = load_settings(demo=True, interval=60, stale_after=300, timeout=30, concurrency=8)
    upstream = Upstream(f"http://127.0.0.1:{port}", SecretStr(KEY), Targets((), (Scope(1, 10),)))
    monitor = new_monitor(settings)
    cache = ExpositionCache()
    tracemalloc.start()
    async with open_scheduler(settings, upstream, monitor) as scheduler:
        for _ in range(2):  # the second round re-renders every image over the first one's bytes
            await scheduler.run_once()
            snapshot = monitor.publisher.current
            sizes = {
                (om, gz): (await cache.get(snapshot, openmetrics=om, gzipped=gz)).size
                for om in (False, True)
                for gz in (False, True)
            }
        traced = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"images {images}, text body {sizes[(False, False)] / MIB:.1f} MiB, ", end="")
    print(f"gzip body {sizes[(False, True)] / MIB:.2f} MiB, peak RSS {rss:.0f} MiB")
    print(f"traced: {current / MIB:.1f} MiB alive after the round, {peak / MIB:.1f} MiB at peak")
    print(f"        {current / images:.0f} bytes an image alive\n")
    by_purpose: Counter[str] = Counter()
    for stat in traced.statistics("filename"):
        by_purpose[purpose(stat.traceback[0].filename)] += stat.size
    print("alive, by what it is for:")
    for name, size in by_purpose.most_common():
        print(f"  {size / MIB:8.1f} MiB  {size / images:7.0f} B/image  {name}")
    print(f"\nalive, the {top} lines that allocated most:")
    for stat in traced.statistics("lineno")[:top]:
        print(f"  {stat.size / MIB:8.1f} MiB  {stat.count:8d} blocks  {where(stat.traceback[0])}")


async def main(images: int, top: int) -> None:
    fake = serve_fake(images)
    assert fake.stdout is not None
    port = int(fake.stdout.readline().split()[0])
    try:
        await profile(port, images, top)
    finally:
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", nargs="?", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=12)
    arguments = parser.parse_args()
    configure_logging("warning", "json")  # stdout is for the profile
    asyncio.run(main(arguments.images, arguments.top))
