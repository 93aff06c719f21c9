"""`make bench`: one table of what serving N images costs, next to what others would cost.

For each scenario (N discovered images, or N explicit ids), the exporter runs as a process of its
own against the fake Gcore API (another process), as users run it, so that its CPU and peak RSS
are its own. Measured, in this order:

1. polls alone: API calls, wall time and CPU seconds of one round (between two `poll done` lines);
2. scrapes between polls: median and p99 for text and gzip bodies, 1 and 16 concurrent scrapers;
3. scrapes through polls: one scraper asking for text, OpenMetrics and gzip in turn, back to back,
   until two more rounds have completed: the p99 of what a scrape waits while the exporter polls.

Then, for discovered images, the same exposition (the exporter's text body) is served by
prometheus_client's stock `make_aiohttp_handler` over a custom collector, and by aiohttp answering
with a prebuilt buffer, each in its own process, and scraped the same way.

Usage: `python -m bench.table [--images 1000,10000,50000] [--ids 2000] [--seconds 1.5]
[--json bench-results.json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.fake_server import PROJECT, REGION, image_id

KEY = "bench-key"
ACCEPT_OPENMETRICS = "application/openmetrics-text;version=1.0.0"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    images: int
    explicit: bool  # explicit ids (one GET each) rather than one PROJECT/REGION target

    @property
    def targets(self) -> list[str]:
        if self.explicit:
            return [f"{PROJECT}/{REGION}/{image_id(n)}" for n in range(self.images)]
        return [f"{PROJECT}/{REGION}"]


@dataclass(slots=True)
class Latencies:
    """Seconds per scrape, first byte asked to last byte read."""

    samples: list[float] = field(default_factory=list)

    def median_ms(self) -> float | None:
        return statistics.median(self.samples) * 1e3 if self.samples else None

    def p99_ms(self) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


@dataclass(slots=True)
class Row:
    scenario: str
    server: str  # exporter, stock (prometheus_client), static (prebuilt buffer)
    api_calls_per_round: int | None = None
    round_seconds: float | None = None
    round_cpu_seconds: float | None = None
    scrapes: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    poll_p99_ms: float | None = None
    text_bytes: int | None = None
    gzip_bytes: int | None = None
    peak_rss_mib: float | None = None


class Child:
    """A process of the benchmark's own, watched through /proc (Linux)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def first_line(self) -> list[str]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"child {self.process.pid} exited before answering")
        return line.decode().split()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@asynccontextmanager
async def child(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Child]:
    started = await Child.start(*args, env=env)
    try:
        yield started
    finally:
        await started.stop()


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    duration: float
    cpu_seconds: float  # the exporter's CPU time when the round's log line came
    api_calls: int  # requests the fake API had answered by then


class Exporter:
    """The exporter as a child process; its `poll done` log lines mark the rounds."""

    def __init__(self, process: Child, url: str, stats_url: str) -> None:
        self.process = process
        self.url = url
        self._stats_url = stats_url
        self.rounds: list[Round] = []
        self._changed = asyncio.Condition()
        self._exited = False
        self._last_lines: list[bytes] = []  # what it said last, for when it dies

    async def follow_log(self, http: aiohttp.ClientSession) -> None:
        stream = self.process.process.stderr
        assert stream is not None
        while line := await stream.readline():
            self._last_lines = [*self._last_lines[-9:], line]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("msg") != "poll done":
                continue
            cpu = self.process.cpu_seconds()
            async with http.get(self._stats_url) as response:
                calls = int(await response.text())
            async with self._changed:
                self.rounds.append(Round(event["round"], event["duration"], cpu, calls))
                self._changed.notify_all()
        async with self._changed:
            self._exited = True
            self._changed.notify_all()

    async def wait_rounds(self, count: int) -> None:
        async with asyncio.timeout(600), self._changed:
            await self._changed.wait_for(lambda: len(self.rounds) >= count or self._exited)
        if len(self.rounds) < count:
            said = b"".join(self._last_lines).decode(errors="replace")
            raise RuntimeError(f"the exporter exited after {len(self.rounds)} rounds:\n{said}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(
    http: aiohttp.ClientSession, url: str, *, gzipped: bool = False, openmetrics: bool = False
) -> tuple[float, int]:
    """One scrape: seconds until its last byte, and the body's size on the wire."""
    headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
    if openmetrics:
        headers["Accept"] = ACCEPT_OPENMETRICS
    started = time.perf_counter()
    size = 0
    async with http.get(url, headers=headers) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


async def load(
    http: aiohttp.ClientSession, url: str, *, gzipped: bool, scrapers: int, seconds: float
) -> Latencies:
    """`scrapers` clients scraping back to back for `seconds` (each at least once)."""
    latencies = Latencies()
    deadline = time.perf_counter() + seconds

    async def scraper() -> None:
        while True:
            took, _ = await scrape(http, url, gzipped=gzipped)
            latencies.samples.append(took)
            if time.perf_counter() >= deadline:
                return

    await asyncio.gather(*(scraper() for _ in range(scrapers)))
    return latencies


async def measure_scrapes(
    http: aiohttp.ClientSession, url: str, row: Row, seconds: float, *, many: bool = True
) -> None:
    for gzipped in (False, True):
        _, size = await scrape(http, url, gzipped=gzipped)  # warm: bodies are built once
        if gzipped:
            row.gzip_bytes = size
        else:
            row.text_bytes = size
        for scrapers in (1, 16) if many else (1,):
            latencies = await load(http, url, gzipped=gzipped, scrapers=scrapers, seconds=seconds)
            row.scrapes[f"{'gzip' if gzipped else 'text'}x{scrapers}"] = {
                "median_ms": latencies.median_ms(),
                "p99_ms": latencies.p99_ms(),
                "count": len(latencies.samples),
            }


async def through_polls(http: aiohttp.ClientSession, exporter: Exporter, rounds: int) -> Latencies:
    """Back-to-back scrapes of every body variant until `rounds` more rounds have completed."""
    target = len(exporter.rounds) + rounds
    variants = ((False, False), (True, False), (False, True))  # (openmetrics, gzipped)
    latencies = Latencies()
    while len(exporter.rounds) < target:
        openmetrics, gzipped = variants[len(latencies.samples) % len(variants)]
        took, _ = await scrape(http, exporter.url, gzipped=gzipped, openmetrics=openmetrics)
        latencies.samples.append(took)
    return latencies


def config_file(directory: Path, scenario: Scenario, interval: float) -> Path:
    path = directory / f"{scenario.name}.yaml"
    # the longest timeout a round allows: a big listing must not time out on a loaded machine
    settings = {"targets": scenario.targets, "interval": interval, "timeout": min(30.0, interval)}
    # GPU clusters are listed on a cadence of their own, which would land in some rounds' call
    # counts and not others: this table measures the image rounds (docs/performance.md has both)
    settings["clusters"] = False
    path.write_text(yaml.safe_dump({**settings, "stale_after": "1h"}), encoding="utf-8")
    return path


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float  # per scrape measurement
    interval: float | None  # None: long enough that scrapes between polls meet no poll
    baselines: bool

    def interval_for(self, scenario: Scenario) -> float:
        if self.interval is not None:
            return self.interval
        guess = 0.3 + scenario.images / (2_000 if scenario.explicit else 8_000)  # a round's time
        return round(max(2.0, 4 * guess) + 4 * (self.seconds + 0.5), 1)


async def run_exporter(
    scenario: Scenario, fake: tuple[str, str], directory: Path, options: Options
) -> tuple[Row, bytes]:
    """The exporter's row, and its text body for the baselines."""
    api_url, stats_url = fake
    port = free_port()
    seconds, interval = options.seconds, options.interval_for(scenario)
    env = {**os.environ, "GCORE_API_KEY": KEY, "GCORE_BASE_URL": api_url}
    config = config_file(directory, scenario, interval)
    args = ["-m", "exporter", "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}"]
    row = Row(scenario.name, "exporter")
    async with (
        child(*args, "--log.format", "json", env=env) as process,
        aiohttp.ClientSession(auto_decompress=False) as http,
    ):
        exporter = Exporter(process, f"http://127.0.0.1:{port}/metrics", stats_url)
        following = asyncio.create_task(exporter.follow_log(http))
        try:
            await exporter.wait_rounds(2)  # round 1 fills the store; round 2 runs unscraped
            first, second = exporter.rounds[0], exporter.rounds[1]
            row.api_calls_per_round = second.api_calls - first.api_calls
            row.round_seconds = second.duration
            row.round_cpu_seconds = round(second.cpu_seconds - first.cpu_seconds, 3)
            await measure_scrapes(http, exporter.url, row, seconds)
            row.poll_p99_ms = (await through_polls(http, exporter, 2)).p99_ms()
            async with http.get(exporter.url, headers={"Accept-Encoding": "identity"}) as answer:
                body = await answer.read()
            row.peak_rss_mib = process.peak_rss_mib()
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
    return row, body


async def run_baseline(kind: str, scenario: Scenario, body_file: Path, seconds: float) -> Row:
    row = Row(scenario.name, kind)
    async with (
        child("-m", "bench.baseline", kind, str(body_file)) as process,
        aiohttp.ClientSession(auto_decompress=False) as http,
    ):
        (port,) = await process.first_line()
        url = f"http://127.0.0.1:{port}/metrics"
        took, _ = await scrape(http, url)
        # A stock scrape of 10,000s of images takes seconds: 16 at once would take minutes.
        await measure_scrapes(http, url, row, seconds, many=took < 1.0)
        row.peak_rss_mib = process.peak_rss_mib()
    return row


async def run_scenario(scenario: Scenario, options: Options) -> list[Row]:
    locked_every = "100"
    fake_args = ["-m", "bench.fake_server", str(scenario.images), KEY]
    async with child(*fake_args, "--locked-every", locked_every) as fake:
        api_port, stats_port = await fake.first_line()
        urls = (f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{stats_port}/requests")
        with tempfile.TemporaryDirectory(prefix="gcore-bench-") as directory:
            row, body = await run_exporter(scenario, urls, Path(directory), options)
            rows = [row]
            if options.baselines and not scenario.explicit:
                body_file = Path(directory) / "body.prom"
                body_file.write_bytes(body)
                del body
                for kind in ("stock", "static"):
                    rows.append(await run_baseline(kind, scenario, body_file, options.seconds))
    return rows


COLUMNS: Sequence[tuple[str, Callable[[Row], Any]]] = (
    ("scenario", lambda r: r.scenario),
    ("server", lambda r: r.server),
    ("API calls/round", lambda r: r.api_calls_per_round),
    ("round s", lambda r: r.round_seconds),
    ("round CPU s", lambda r: r.round_cpu_seconds),
    *(
        (f"{variant} p50/p99 ms", lambda r, v=variant: _pair(r.scrapes.get(v)))
        for variant in ("textx1", "textx16", "gzipx1", "gzipx16")
    ),
    ("p99 in polls ms", lambda r: r.poll_p99_ms),
    ("text MiB", lambda r: None if r.text_bytes is None else r.text_bytes / 2**20),
    ("gzip MiB", lambda r: None if r.gzip_bytes is None else r.gzip_bytes / 2**20),
    ("peak RSS MiB", lambda r: r.peak_rss_mib),
)


def _pair(stats: dict[str, float | int | None] | None) -> str | None:
    if not stats or stats["median_ms"] is None or stats["p99_ms"] is None:
        return None
    return f"{_cell(stats['median_ms'])}/{_cell(stats['p99_ms'])}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: the README's Performance section is pasted from it."""
    header = [name for name, _ in COLUMNS]
    lines = [[_cell(get(row)) for _, get in COLUMNS] for row in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def scenarios(images: Sequence[int], ids: Sequence[int]) -> list[Scenario]:
    found = [Scenario(f"{n:,} discovered", n, explicit=False) for n in images]
    return found + [Scenario(f"{n:,} explicit ids", n, explicit=True) for n in ids]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("counts must be positive; leave the list empty for none")
    return counts


async def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=_counts, default=[1_000, 10_000, 50_000])
    parser.add_argument("--ids", type=_counts, default=[2_000])
    parser.add_argument("--seconds", type=float, default=1.5, help="per scrape measurement")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--interval", type=float, help="the exporter's (default: from the size)")
    parser.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="the exporter only"
    )
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for scenario in scenarios(args.images, args.ids):
        print(f"measuring {scenario.name} ...", file=sys.stderr, flush=True)
        rows += await run_scenario(scenario, Options(args.seconds, args.interval, args.baselines))
    print(table(rows))
    machine = {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": sys.version.split()[0]}
    report: dict[str, Any] = {"machine": machine, "options": vars(args) | {"json": str(args.json)}}
    report["rows"] = [asdict(row) for row in rows]
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"(written to {args.json})")
    return rows


if __name__ == "__main__":
    asyncio.run(main())
