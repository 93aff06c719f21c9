"""API calls per round for a sparse account: most scopes exist, few hold images.

An account of P projects x R regions x 2 kinds (both wildcards), S scopes holding an image, is
polled for N rounds of a minute on a moved clock, with a discovery refresh and a Tasks poll
as the daemon runs them. Printed: calls per round by kind of call, averaged over the rounds,
"before" (every scope listed every round, as when the cadence equals the round) and "after"
(empty and unavailable scopes listed at the discovery interval), for images and GPU clusters
(polled after each round, the default cluster interval).
Usage: `python -m bench.sparse_account [--projects 10 --regions 12 --with-images 5 --rounds 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from exporter.config.settings import load_settings
from exporter.daemon.wiring import Upstream, new_monitor, open_poller
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region
from exporter.logs import configure_logging

KEY = "bench-key"
INTERVAL = 60.0
DISCOVERY = 600.0


@dataclass(frozen=True)
class Figures:
    listings: float
    clusters: float
    tasks: float
    discovery: float

    @property
    def total(self) -> float:
        return self.listings + self.clusters + self.tasks + self.discovery


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def account(fake: FakeGcore, projects: int, regions: int, with_images: int) -> None:
    fake.projects = [make_project(p, f"project-{p}") for p in range(1, projects + 1)]
    fake.regions = [make_region(r, f"region-{r}") for r in range(1, regions + 1)]
    pairs = [(p, r) for p in range(1, projects + 1) for r in range(1, regions + 1)]
    step = max(1, len(pairs) // max(1, with_images))
    for n, (p, r) in enumerate(pairs[::step][:with_images]):
        fake.put_image(p, r, make_image(f"5ca1ab1e-0000-4000-8000-{n:012d}", f"image-{n}"))


async def measure(url: str, fake: FakeGcore, rounds: int, relist: float) -> Figures:
    """Calls per round over `rounds` rounds, a discovery every `DISCOVERY` seconds; an empty
    scope is listed every `relist` seconds (the discovery interval, or every round before)."""
    settings = load_settings(
        demo=True,
        targets=["*", "baremetal:*"],
        interval=INTERVAL,
        discovery_interval=relist,
    )
    clock = Clock()
    monitor = new_monitor(settings, wall_clock=clock)
    upstream = Upstream(url, SecretStr(KEY), settings.resolved_targets())
    fake.requests.clear()
    async with open_poller(settings, upstream, monitor, wall_clock=clock) as poller:
        last_refresh = None
        for _ in range(rounds):
            if last_refresh is None or clock.now - last_refresh >= DISCOVERY:
                await poller.refresh()
                last_refresh = clock.now
            await poller.poll_tasks()
            await poller.scheduler.run_once()
            await poller.poll_clusters()  # the cluster interval is the round's, by default
            clock.now += INTERVAL
    return Figures(
        listings=fake.count(r"/images\?") / rounds,
        clusters=fake.count(r"/clusters\?") / rounds,
        tasks=fake.count(r"^/cloud/v1/tasks\?") / rounds,
        discovery=fake.count(r"^/cloud/v1/(projects|regions)\?") / rounds,
    )


async def main(projects: int, regions: int, with_images: int, rounds: int) -> None:
    fake = FakeGcore(api_key=KEY)
    account(fake, projects, regions, with_images)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        before = await measure(url, fake, rounds, relist=INTERVAL)
        after = await measure(url, fake, rounds, relist=DISCOVERY)
    finally:
        await runner.cleanup()
    scopes = projects * regions * 2
    print(
        f"{projects} projects x {regions} regions x 2 kinds = {scopes} scopes, "
        f"{with_images} with images; {rounds} rounds of {INTERVAL:g}s, discovery every "
        f"{DISCOVERY:g}s"
    )
    print(
        "| | image listings/round | cluster listings/round | tasks pages/round "
        "| projects+regions/round | total |"
    )
    print("|---|---|---|---|---|---|")
    for name, figures in (("before", before), ("after", after)):
        print(
            f"| {name} | {figures.listings:.1f} | {figures.clusters:.1f} | {figures.tasks:.1f} | "
            f"{figures.discovery:.1f} | {figures.total:.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--regions", type=int, default=12)
    parser.add_argument("--with-images", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    configure_logging("error", "console")
    asyncio.run(main(args.projects, args.regions, args.with_images, args.rounds))
