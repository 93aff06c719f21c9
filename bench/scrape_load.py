"""Scrape load: C concurrent scrapers against a daemon polling N images, plain and TLS + basic auth.

The fake Gcore API and the exporter run as their own processes (the exporter through its command
line, as users run it); this process only scrapes, each scraper on its own kept-alive connection,
reading bodies as they come. Reported: the exporter's RSS after warm-up (polled, one scrape
served), at most during the load and at the end; its open file descriptors at most; scrape latency.
Usage: `python -m bench.scrape_load [--images N] [--clients C] [--duration S] [--read-rate MIB_S]
[--gzip] [--variant plain|secure|both]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import bcrypt
import yaml

from bench.loop_lag import KEY, serve_fake
from bench.pki import CertificateAuthority

USER, PASSWORD = "prometheus", "bench-password"
MIB = 2**20


@dataclass(frozen=True)
class Load:
    """What the scrapers saw and the sampler found while they ran."""

    scrapes: int
    failures: int
    rss_max: int
    fds_max: int
    latencies: tuple[float, ...]  # sorted, seconds


@dataclass(frozen=True)
class LoadReport:
    variant: str
    images: int
    clients: int
    seconds: float
    rate: float | None
    gzip: bool
    scrapes: int
    failures: int
    body_bytes: int
    rss_warm: int
    rss_max: int
    rss_end: int
    fds_max: int
    latencies: tuple[float, ...]  # sorted, seconds

    def quantile(self, q: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * q))]

    def lines(self) -> list[str]:
        pace = f"reading {self.rate / MIB:g} MiB/s each" if self.rate else "reading at full speed"
        return [
            f"{self.variant}, {'gzip' if self.gzip else 'uncompressed'}: {self.images} images, "
            f"{self.clients} scrapers {pace}, {self.seconds:.0f} s",
            f"  scrapes:      {self.scrapes} ({self.failures} failed), "
            f"body {self.body_bytes / MIB:.1f} MiB as sent",
            f"  RSS:          {self.rss_warm / MIB:.0f} MiB after warm-up, "
            f"{self.rss_max / MIB:.0f} MiB at most under load, "
            f"{self.rss_end / MIB:.0f} MiB at the end",
            f"  open fds:     {self.fds_max} at most",
            f"  latency:      p50 {self.quantile(0.5) * 1e3:.0f} ms, "
            f"p99 {self.quantile(0.99) * 1e3:.0f} ms",
        ]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secure_config(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A web config with TLS and one bcrypt user (cost 10, as htpasswd makes); the client's TLS."""
    ca = CertificateAuthority("bench CA")
    ca.issue("exporter").write(directory, "server")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    config = {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
        "basic_auth_users": {USER: hashed},
    }
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, ssl.create_default_context(cadata=ca.cert_pem.decode())


@asynccontextmanager
async def _exporter(
    api_port: int, port: int, web_config: Path | None, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GCORE_")},
        "GCORE_API_KEY": KEY,
        "GCORE_BASE_URL": f"http://127.0.0.1:{api_port}",
    }
    secure = ["--web.config.file", str(web_config)] if web_config else []
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}"),
            *("--target", "1/10", "--interval", "1h", "--timeout", "60s"),
            *("--log.format", "json", "--log.level", "warn", *secure),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=output,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 10)


def _small_window(addr_info: aiohttp.AddrInfoType) -> socket.socket:
    """A slow link's socket: a fixed 64 KiB receive window (loopback would grow it to 32 MiB and
    hold whole bodies in the kernel, where no server would see them)."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return sock


async def _scrape(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], rate: float | None = None
) -> int:
    """One scrape read to its end, at most `rate` bytes/s: the body's size; raises on failure."""
    size, started = 0, time.perf_counter()
    async with http.get(url, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if rate is not None:  # a scraper on a slow link: pace the reading
                await asyncio.sleep(max(0.0, size / rate - (time.perf_counter() - started)))
    return size


async def run_load(
    images: int,
    clients: int,
    duration: float,
    *,
    secure: bool,
    workdir: Path,
    rate: float | None = None,
    gzip: bool = False,
) -> LoadReport:
    """`clients` scrapers for `duration` seconds, each reading at most `rate` bytes/s if given,
    asking for gzip if `gzip` (as Prometheus does by default; the plain body is the harder case)."""
    fake = serve_fake(images)
    assert fake.stdout is not None
    try:
        api_port = int(fake.stdout.readline().split()[0])
        web_config, tls = _secure_config(workdir) if secure else (None, None)
        port = _free_port()
        base = f"{'https' if secure else 'http'}://127.0.0.1:{port}"
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        if secure:
            headers["Authorization"] = f"Basic {token}"
        log = workdir / f"exporter-{'secure' if secure else 'plain'}.log"
        async with _exporter(api_port, port, web_config, log) as process:
            connector = aiohttp.TCPConnector(
                limit=clients,
                ssl=tls if tls else True,
                socket_factory=_small_window if rate is not None else None,
            )
            timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            ) as http:
                await _until_ready(http, base, headers, process, log)
                body = await _scrape(http, base + "/metrics", headers)
                rss_warm = _rss(process.pid)
                scrape = partial(_scrape, http, base + "/metrics", headers, rate)
                load = await _load(scrape, clients, duration, process)
            return LoadReport(
                variant="TLS + basic auth" if secure else "plain HTTP",
                images=images,
                clients=clients,
                seconds=duration,
                rate=rate,
                gzip=gzip,
                scrapes=load.scrapes,
                failures=load.failures,
                body_bytes=body,
                rss_warm=rss_warm,
                rss_max=load.rss_max,
                rss_end=_rss(process.pid),
                fds_max=load.fds_max,
                latencies=load.latencies,
            )
    finally:
        fake.kill()
        fake.wait()


async def _until_ready(
    http: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    process: asyncio.subprocess.Process,
    log: Path,
) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the exporter exited; its log: {log}")
        try:
            async with http.get(base + "/readyz", headers=headers) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)  # poll readiness until the deadline
    raise TimeoutError("the exporter was not ready within 300 s")


async def _load(
    scrape: Callable[[], Awaitable[int]],
    clients: int,
    duration: float,
    process: asyncio.subprocess.Process,
) -> Load:
    latencies: list[float] = []
    failures = 0
    peak = {"rss": 0, "fds": 0}
    deadline = time.monotonic() + duration

    async def scraper() -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await scrape()
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                failures += 1
            else:
                latencies.append(time.perf_counter() - started)

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss(process.pid))
            peak["fds"] = max(peak["fds"], _fds(process.pid))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    await asyncio.gather(*(scraper() for _ in range(clients)))
    stop.set()
    await sampling
    return Load(len(latencies), failures, peak["rss"], peak["fds"], tuple(sorted(latencies)))


async def main(
    images: int,
    clients: int,
    duration: float,
    variants: list[bool],
    rate: float | None,
    gzip: bool,
) -> None:
    with tempfile.TemporaryDirectory(prefix="scrape-load-") as workdir:
        for secure in variants:
            report = await run_load(
                images,
                clients,
                duration,
                secure=secure,
                workdir=Path(workdir),
                rate=rate,
                gzip=gzip,
            )
            print("\n".join(report.lines()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--variant", choices=("plain", "secure", "both"), default="both")
    parser.add_argument(
        "--read-rate", type=float, help="MiB/s each scraper reads at most (default: full speed)"
    )
    parser.add_argument("--gzip", action="store_true", help="ask for gzip, as Prometheus does")
    args = parser.parse_args()
    chosen = {"plain": [False], "secure": [True], "both": [False, True]}[args.variant]
    rate = args.read_rate * MIB if args.read_rate else None
    asyncio.run(main(args.images, args.clients, args.duration, chosen, rate, args.gzip))
