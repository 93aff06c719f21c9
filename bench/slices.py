"""Where the event loop's time goes during a poll: every slice of work between two yields.

A scrape waits for the slice the loop is in, and for one more at each of its writes that has to
wait for the socket, so the longest slices are what scrapes feel during polls. This runs one
process polling N discovered images (the fake API in another process) while a probe task takes
every turn of the loop: the CPU time of the loop's thread between two turns of the probe is a
slice (CPU time, so that other processes on the machine do not inflate the figures). A sampling
thread looks at the stack of the slices that last, and names what they do: validation,
rendering, folding blocks, publication, garbage collection, ...
Usage: `python -m bench.slices [N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pydantic import SecretStr

from bench.fake_server import PROJECT, REGION
from bench.table import KEY, child
from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_scheduler
from exporter.metrics.exposition import ExpositionCache
from exporter.vocabulary import Scope, Targets

SAMPLE_EVERY = 0.0005  # seconds between two looks at the loop's stack
SLOW = 0.002  # slices shorter than this are not sampled
WORK = 0.0001  # shorter slices are the loop turning with nothing to do: left out of the figures

# What a stack frame says about the work, first match from the innermost frame out.
KINDS: tuple[tuple[str, Callable[[FrameType], bool]], ...] = (
    ("json decoding", lambda f: f.f_code.co_filename.endswith("json/decoder.py")),
    ("validation", lambda f: f.f_code.co_name in ("model_validate", "list_pages")),
    ("rendering", lambda f: f.f_code.co_filename.endswith("exporter/metrics/families.py")),
    ("folding blocks", lambda f: f.f_code.co_filename.endswith("exporter/metrics/blocks.py")),
    ("publication", lambda f: f.f_code.co_filename.endswith("exporter/metrics/snapshot.py")),
    ("exposition", lambda f: f.f_code.co_filename.endswith("exporter/metrics/exposition.py")),
    ("image store", lambda f: f.f_code.co_filename.endswith("exporter/metrics/image_store.py")),
    ("fetcher", lambda f: f.f_code.co_filename.endswith("exporter/polling/fetcher.py")),
    ("HTTP client", lambda f: "aiohttp" in f.f_code.co_filename),
)


def kind_of(frame: FrameType | None) -> str:
    while frame is not None:
        for kind, matches in KINDS:
            if matches(frame):
                return kind
        frame = frame.f_back
    return "other"


@dataclass
class Slice:
    seconds: float  # CPU time of the loop's thread
    kinds: Counter[str] = field(default_factory=Counter)  # samples by kind


class Recorder:
    """A probe task takes every turn of the loop; the CPU time of the loop's thread between two of
    its turns is one slice of other work. A thread samples the stack of the slices that last."""

    def __init__(self) -> None:
        self.slices: list[Slice] = []
        self.gc_pauses: list[float] = []
        self._current = Slice(0.0)
        self._started = time.perf_counter()  # when the current slice began
        self._in_gc = False
        self._gc_started = 0.0
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._in_gc, self._gc_started = True, time.thread_time()
        else:
            self._in_gc = False
            self.gc_pauses.append(time.thread_time() - self._gc_started)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            current = self._current
            if time.perf_counter() - self._started < SLOW:
                continue
            if self._in_gc:
                current.kinds["garbage collection"] += 1
                continue
            current.kinds[kind_of(sys._current_frames().get(self._loop_thread))] += 1

    async def _probe(self, stop: asyncio.Event) -> None:
        cpu = time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0)  # back of the queue: the loop runs everything else once
            now = time.thread_time()
            self._current.seconds = now - cpu
            self.slices.append(self._current)
            self._current, self._started, cpu = Slice(0.0), time.perf_counter(), now

    @asynccontextmanager
    async def recording(self) -> AsyncIterator[None]:
        sampler = threading.Thread(target=self._sample, daemon=True)
        stop = asyncio.Event()
        gc.callbacks.append(self._gc)
        sampler.start()
        probe = asyncio.create_task(self._probe(stop))
        try:
            yield
        finally:
            stop.set()
            await probe
            self._stop.set()
            sampler.join()
            gc.callbacks.remove(self._gc)


def report(recorder: Recorder, wall: float) -> str:
    slices = sorted((s for s in recorder.slices if s.seconds >= WORK), key=lambda s: s.seconds)
    seconds = [s.seconds for s in slices]
    total = sum(seconds)
    lines = [
        f"{len(slices)} slices of work (0.1 ms or more), {total:.2f} s CPU in {wall:.2f} s: "
        f"p50 {seconds[len(seconds) // 2] * 1e3:.2f} ms, "
        f"p99 {seconds[int(len(seconds) * 0.99)] * 1e3:.1f} ms, max {seconds[-1] * 1e3:.1f} ms",
        f"garbage collection: {len(recorder.gc_pauses)} pauses, "
        f"{sum(recorder.gc_pauses) * 1e3:.0f} ms in all, longest "
        f"{max(recorder.gc_pauses, default=0.0) * 1e3:.1f} ms",
        "",
        "| slices over | count | CPU ms | mostly |",
        "|---|---|---|---|",
    ]
    for floor in (0.005, 0.010, 0.020, 0.050):
        over = [s for s in slices if s.seconds >= floor]
        kinds: Counter[str] = Counter()
        for s in over:
            kinds.update(s.kinds)
        mostly = ", ".join(
            f"{k} {n * 100 // max(1, kinds.total())}%" for k, n in kinds.most_common(4)
        )
        cpu = sum(s.seconds for s in over) * 1e3
        lines.append(f"| {floor * 1e3:.0f} ms | {len(over)} | {cpu:.0f} | {mostly or '-'} |")
    lines += ["", "longest slices:"]
    for s in reversed(slices[-8:]):
        what = ", ".join(f"{k} {n}" for k, n in s.kinds.most_common(3))
        lines.append(f"  {s.seconds * 1e3:6.1f} ms  {what}")
    return "\n".join(lines)


async def measure(port: int, rounds: int) -> str:
    gc.freeze()  # as the daemon does at startup
    settings = load_settings(demo=True, interval=60, stale_after=3600, timeout=30)
    targets = Targets((), (Scope(PROJECT, REGION),))
    upstream = Upstream(f"http://127.0.0.1:{port}", SecretStr(KEY), targets)
    monitor = new_monitor(settings)
    cache = ExpositionCache()
    async with open_scheduler(settings, upstream, monitor) as scheduler:
        await scheduler.run_once()  # the first round fills the store; the next ones are measured
        recorder = Recorder()
        started = time.perf_counter()
        async with recorder.recording():
            for _ in range(rounds):
                await scheduler.run_once()
                for openmetrics, gzipped in ((False, False), (True, False), (False, True)):
                    snapshot = monitor.publisher.current
                    await cache.get(snapshot, openmetrics=openmetrics, gzipped=gzipped)
        return report(recorder, time.perf_counter() - started)


async def main(images: int, rounds: int) -> None:
    fake_args = ["-m", "bench.fake_server", str(images), KEY]
    async with child(*fake_args) as fake:
        api_port, _ = await fake.first_line()
        print(f"{images:,} discovered images, {rounds} rounds after the first:")
        print(await measure(int(api_port), rounds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", nargs="?", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.images, args.rounds))
