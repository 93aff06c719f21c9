"""Event-loop lag and scrape cost while one process polls N discovered images (default 50,000).

The fake Gcore API runs in another process, so its work and memory do not count here. A probe
task measures how late a 5 ms sleep wakes up: how long a scrape could have waited for the loop.
After the first poll, two more: one with what the first left alive open to full collections, one
with it frozen out of them (`gc.freeze()`), each with its full collections and their longest pause:
what freezing the survivors of a round is worth.
Usage: `python -m bench.loop_lag [N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable
from typing import TypeVar

from pydantic import SecretStr

from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_scheduler
from exporter.metrics.exposition import ExpositionCache
from exporter.polling.scheduler import Scheduler
from exporter.vocabulary import Scope, Targets

KEY = "bench-key"
T = TypeVar("T")


def serve_fake(images: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.fake_server", str(images), KEY]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - started - 0.005)


async def measured(work: Awaitable[T]) -> tuple[T, float, list[float]]:
    """Run `work` while probing the loop: its result, wall time and the sorted lags seen."""
    lags: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(lags, stop))
    started = time.perf_counter()
    result = await work
    wall = time.perf_counter() - started
    stop.set()
    await prober
    return result, wall, sorted(lags)


class FullCollections:
    """The pauses of full (generation 2) collections while installed as a `gc.callbacks` entry."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def line(self) -> str:
        longest = max(self.pauses, default=0.0)
        return f"{len(self.pauses)} full collections, longest {longest * 1e3:.1f} ms"


async def next_poll(scheduler: Scheduler, *, frozen: bool) -> str:
    """One more poll, with what earlier ones left alive frozen out of the collector or not."""
    gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    collections = FullCollections()
    gc.callbacks.append(collections)
    try:
        _, poll_s, lags = await measured(scheduler.run_once())
    finally:
        gc.callbacks.remove(collections)
    return f"{poll_s:.2f} s; {lag_line(lags)}; {collections.line()}"


def lag_line(lags: list[float]) -> str:
    if not lags:
        return "the loop never waited"
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    return f"loop lag p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {lags[-1] * 1e3:.1f} ms"


async def main(images: int) -> None:
    fake = serve_fake(images)
    assert fake.stdout is not None
    port = int(fake.stdout.readline().split()[0])
    try:
        await measure(port, images)
    finally:
        fake.kill()
        fake.wait()


async def measure(port: int, images: int) -> None:
    gc.freeze()  # as the daemon does at startup
    settings = load_settings(demo=True, interval=60, stale_after=300, timeout=30, concurrency=8)
    upstream = Upstream(f"http://127.0.0.1:{port}", SecretStr(KEY), Targets((), (Scope(1, 10),)))
    monitor = new_monitor(settings)
    async with open_scheduler(settings, upstream, monitor) as scheduler:
        result, poll_s, poll_lags = await measured(scheduler.run_once())
        first_rss = peak_rss_mib()
        thawed = await next_poll(scheduler, frozen=False)
        frozen = await next_poll(scheduler, frozen=True)
    cache = ExpositionCache()
    snapshot = monitor.publisher.current
    text, text_s, text_lags = await measured(cache.get(snapshot, openmetrics=False, gzipped=False))
    packed, gzip_s, gzip_lags = await measured(cache.get(snapshot, openmetrics=False, gzipped=True))
    _, cached_s, _ = await measured(cache.get(snapshot, openmetrics=False, gzipped=True))
    print(f"images:          {images} ({result.ok} listing ok, {result.failed} failed)")
    print(f"poll:            {poll_s:.2f} s (list, validate, render); {lag_line(poll_lags)}")
    print(f"next poll:       {thawed}")
    print(f"frozen, next:    {frozen}")
    text_mib, packed_mib = text.size / 2**20, packed.size / 2**20
    print(f"first text body: {text_s * 1e3:.0f} ms, {text_mib:.1f} MiB; {lag_line(text_lags)}")
    print(f"gzip body:       {gzip_s * 1e3:.0f} ms, {packed_mib:.1f} MiB; {lag_line(gzip_lags)}")
    print(f"cached body:     {cached_s * 1e6:.0f} us")
    print(
        f"peak RSS:        {first_rss:.0f} MiB in the first poll, {peak_rss_mib():.0f} MiB in all"
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", nargs="?", type=int, default=50_000)
    asyncio.run(main(parser.parse_args().images))
