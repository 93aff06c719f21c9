"""A flood of wrong passwords: how long `/healthz` and an authorised scrape take meanwhile.

The exporter's web server runs in a child process behind a web config with bcrypt users (cost 10,
as `htpasswd -nBC 10` makes). The parent sends `--requests` wrong-password requests at once,
each on its own connection, while it probes `/healthz` (a new connection each time, as kubelet
does) and scrapes `/metrics` with the right password (kept alive, as Prometheus does), one after
another, until the flood is answered; and, 0.1 s in, a user's first login (a password not yet
verified). Twice: distinct guesses, then one wrong password repeated.
Usage: `python -m bench.auth_flood [--requests 200] [--cost 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bcrypt
import yaml
from aiohttp import web

from exporter.metrics.snapshot import Snapshot
from exporter.web.app import create_app, server_options
from exporter.web.guard import WebGuard

PASSWORD = b"correct horse battery staple"


class _Source:
    current = Snapshot(1, (), b"bench_up 1\n", b"bench_up 1\n", ready=True)


def basic(password: bytes, user: bytes = b"alice") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user + b":" + password).decode()}


async def serve(config: Path) -> None:
    """The child: serve until stdin closes, after printing the port."""
    app = create_app(_Source(), WebGuard.load(config))
    runner = web.AppRunner(app, **server_options(app))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


async def timed(http: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.get(url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response.status, time.perf_counter() - started


async def probing(
    url: str, path: str, headers: dict[str, str], new_connections: bool, stop: asyncio.Event
) -> list[float]:
    """Request `path` one after another until `stop`; the latencies, all answered 200."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(force_close=new_connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set() or not latencies:
            status, took = await timed(http, url + path, headers=headers)
            assert status == 200, f"{path}: {status}"
            latencies.append(took)
    return latencies


async def first_login(url: str, user: bytes) -> str:
    """A password not yet verified, sent once the flood is under way."""
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as http:
        status, took = await timed(http, url + "/metrics", headers=basic(PASSWORD, user))
    return f"answered {status} in {took * 1e3:.0f} ms"


async def flood(url: str, requests: int, same: bool) -> str:
    login = asyncio.create_task(first_login(url, b"bob" if same else b"carol"))
    stop = asyncio.Event()
    probes = asyncio.create_task(probing(url, "/healthz", {}, True, stop))
    scrapes = asyncio.create_task(probing(url, "/metrics", basic(PASSWORD), False, stop))
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as http:
        guesses = [b"wrong" if same else b"guess %d" % n for n in range(requests)]
        answers = await asyncio.gather(
            *(timed(http, url + "/metrics", headers=basic(guess)) for guess in guesses)
        )
    wall = time.perf_counter() - started
    stop.set()
    statuses = collections.Counter(status for status, _ in answers)
    return (
        f"{requests} {'times one wrong password' if same else 'distinct wrong passwords'}: "
        f"answered in {wall:.2f} s ({', '.join(f'{n} x {s}' for s, n in sorted(statuses.items()))})"
        f"\n  /healthz:             {figures(await probes)}"
        f"\n  authorised /metrics:  {figures(await scrapes)}"
        f"\n  a first login:        {await login}"
    )


def figures(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    return (
        f"{len(ordered)} requests, p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
        f"max {ordered[-1] * 1e3:.1f} ms"
    )


async def main(requests: int, cost: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(cost)).decode()
        users = dict.fromkeys(("alice", "bob", "carol"), hashed)
        config.write_text(yaml.safe_dump({"basic_auth_users": users}))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.auth_flood",
            "--serve",
            str(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stdin is not None
        url = f"http://127.0.0.1:{int(await child.stdout.readline())}"
        try:
            async with aiohttp.ClientSession() as http:  # the password, verified once
                assert (await timed(http, url + "/metrics", headers=basic(PASSWORD)))[0] == 200
            print(f"bcrypt cost {cost}; flood and probes from another process than the server")
            for same in (False, True):
                print(await flood(url, requests, same))
        finally:
            child.stdin.close()
            await child.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the user's hash")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(serve(args.serve) if args.serve else main(args.requests, args.cost))
