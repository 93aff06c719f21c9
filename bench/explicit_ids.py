"""What many explicit ids cost a round: wall time, peak RSS and peak live asyncio tasks.

Each count runs in a process of its own (honest peak RSS), polling that many explicit image ids
(one GET each, `concurrency` 8) from the fake Gcore API in yet another process. The first round
fills the store; the second is measured, while a sampler counts the live tasks every 5 ms.
Usage: `python -m bench.explicit_ids [COUNT ...]` (default 2000 50000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

from pydantic import SecretStr

from bench.fake_server import PROJECT, REGION, image_id
from bench.table import KEY, child
from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_scheduler
from exporter.logs import configure_logging
from exporter.vocabulary import ImageKey, Scope, Targets


async def sample_tasks(peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], len(asyncio.all_tasks()))
        await asyncio.sleep(0.005)


async def one(count: int) -> dict[str, float]:
    """Measure `count` ids in this process."""
    async with child("-m", "bench.fake_server", str(count), KEY, "--locked-every", "0") as fake:
        api_port, _ = await fake.first_line()
        settings = load_settings(demo=True, interval=3600, stale_after=3600, timeout=60)
        scope = Scope(PROJECT, REGION)
        targets = Targets(tuple(ImageKey(scope, image_id(n)) for n in range(count)), ())
        upstream = Upstream(f"http://127.0.0.1:{api_port}", SecretStr(KEY), targets)
        async with open_scheduler(settings, upstream, new_monitor(settings)) as scheduler:
            await scheduler.run_once()
            peak, stop = [0], asyncio.Event()
            sampler = asyncio.create_task(sample_tasks(peak, stop))
            started = time.perf_counter()
            result = await scheduler.run_once()
            wall = time.perf_counter() - started
            stop.set()
            await sampler
    return {
        "ids": count,
        "ok": result.ok,
        "round_seconds": round(wall, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_live_tasks": peak[0],
    }


async def main(counts: list[int]) -> None:
    print("| explicit ids | round s | peak RSS MiB | peak live tasks |")
    print("|---|---|---|---|")
    for count in counts:
        async with child("-m", "bench.explicit_ids", "--one", str(count)) as measured:
            assert measured.process.stdout is not None
            line = await measured.process.stdout.readline()
            await measured.process.wait()
        if not line:
            sys.exit(f"measuring {count} ids failed")
        row = json.loads(line)
        print(
            f"| {count:,} | {row['round_seconds']} | {row['peak_rss_mib']} "
            f"| {row['peak_live_tasks']} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("counts", nargs="*", type=int, default=[2_000, 50_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        configure_logging("warning", "json")  # stdout is for the result
        print(json.dumps(asyncio.run(one(args.one))), flush=True)
    else:
        asyncio.run(main(args.counts))
