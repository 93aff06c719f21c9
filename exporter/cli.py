"""Command line: parse flags, validate settings (exit 2 on any problem), then serve or poll once.

Serving follows operators' habits: SIGTERM and SIGINT stop, SIGHUP reloads the configuration, and
an address that cannot be listened on is one log line and exit status 3.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

import structlog
from aiohttp import web

from exporter import __version__
from exporter.config.keys import KeySource
from exporter.config.settings import (
    DEFAULT_PORT,
    ConfigError,
    Settings,
    listen_address,
    load_settings,
)
from exporter.daemon.collector import SurvivorFreeze
from exporter.daemon.lifecycle import POLLING, Polling, create_daemon
from exporter.daemon.wiring import (
    demo_settings,
    new_monitor,
    open_poller,
    upstream_for,
)
from exporter.logs import configure_logging
from exporter.metrics.exposition import render_parts
from exporter.web.app import server_options
from exporter.web.guard import WebGuard

EXIT_OK, EXIT_FETCH_FAILED, EXIT_CONFIG, EXIT_LISTEN = 0, 1, 2, 3

log = structlog.get_logger("exporter.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcore-gpu-image-exporter",
        description="Prometheus exporter for Gcore Cloud GPU images (virtual and bare metal). "
        "Every option can also come from the environment or a YAML file (see README).",
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="YAML file with any of the settings below")
    add(
        "--target",
        dest="targets",
        action="append",
        metavar="SPEC",
        help="PROJECT/REGION/IMAGE_ID, PROJECT/REGION (every image there), IMAGE_ID, "
        "* (every GPU region of every project), PROJECT/* or */REGION; baremetal: before any "
        "of them for bare-metal GPU images; repeatable",
    )
    add("--interval", help="time between polls: seconds or a duration like 30s, 5m (default 60s)")
    add("--timeout", help="timeout of one API request (default 10s)")
    add("--concurrency", type=int, help="most API requests in flight (default 8)")
    add(
        "--stale-after",
        dest="stale_after",
        help="how long last known values outlive failed fetches (default 5 x interval)",
    )
    add(
        "--discovery-interval",
        dest="discovery_interval",
        help="time between listings of projects and regions for wildcard targets (default 10m)",
    )
    add(
        "--task-interval",
        dest="task_interval",
        help="time between polls of failed image tasks (default: the interval)",
    )
    add(
        "--failed-task-window",
        dest="failed_task_window",
        help="how long a failed image task stays in /metrics after it finished (default 24h)",
    )
    add(
        "--image-task-pattern",
        dest="image_task_pattern",
        metavar="REGEX",
        help="task types that count as image tasks (default: any containing `image`)",
    )
    add(
        "--max-response-size",
        dest="max_response_size",
        metavar="SIZE",
        help="largest API answer read, decoded: bytes or a size like 32MiB (default 32MiB)",
    )
    add("--shard", type=int, metavar="I", help="this exporter's shard, 0 to total shards - 1")
    add(
        "--total-shards",
        dest="total_shards",
        type=int,
        metavar="N",
        help="exporters sharing the images by a hash of their id (default 1)",
    )
    add("--listen", metavar="HOST:PORT", help=f"where to serve /metrics (default :{DEFAULT_PORT})")
    add("--log-level", dest="log_level", help="debug, info, warning or error (default info)")
    add(
        "--log-format",
        dest="log_format",
        choices=("json", "console"),
        help="default: console on a terminal, json otherwise",
    )
    add(
        "--web-config-file",
        dest="web_config_file",
        metavar="FILE",
        help="TLS and basic auth for the HTTP server, in the Prometheus exporter-toolkit format",
    )
    add(
        "--protect-probes",
        dest="protect_probes",
        action="store_true",
        default=None,
        help="require the web config's basic auth and rate limit on /healthz and /readyz too",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once",
        action="store_true",
        help="poll once, print the metrics, exit 0 if every fetch succeeded, else 1",
    )
    mode.add_argument(
        "--check-config",
        dest="check_config",
        action="store_true",
        help="validate the configuration, print it (secret masked), exit 0 or 2",
    )
    add(
        "--demo",
        action="store_true",
        default=None,
        help="run against a built-in simulated Gcore API (no account needed)",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = vars(args)
    once, check = flags.pop("once"), flags.pop("check_config")
    try:
        settings = load_settings(**flags)
        api_key = None if settings.demo else settings.read_api_key()
        guard = WebGuard.load(settings.web_config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gcore-gpu-image-exporter: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = [api_key.current.get_secret_value()] if api_key else []
    configure_logging(settings.log_level, settings.log_format, secrets)
    if check:
        shown = demo_settings(settings) if settings.demo else settings
        print(json.dumps({**shown.describe(), "web": guard.describe()}, indent=2))
        return EXIT_OK
    if once:
        return asyncio.run(_once(settings, api_key))
    # Modules and classes live as long as the process: keep the collector from rescanning them,
    # which shortens the pauses of full collections while big listings come and go.
    gc.freeze()
    return asyncio.run(
        _serve(settings, api_key, guard, functools.partial(load_settings, again=True, **flags))
    )


async def _serve(
    settings: Settings,
    api_key: KeySource | None,
    guard: WebGuard,
    reload: Callable[[], Settings],
) -> int:
    """Serve until SIGTERM or SIGINT, reloading on SIGHUP; EXIT_LISTEN if the address is no good."""
    loop = asyncio.get_running_loop()
    stop, hangup = asyncio.Event(), asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    host, port = listen_address(settings.listen)
    try:  # before polling starts: a host that does not resolve is a mistake, not a poll
        await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        log.error("cannot listen", listen=settings.listen, problem=f"{host}: {exc.strerror}")
        return EXIT_LISTEN
    app = create_daemon(settings, api_key, guard, after_round=SurvivorFreeze())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=3.0, **server_options(app))
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, ssl_context=guard.ssl_context).start()
        except OSError as exc:
            problem = os.strerror(exc.errno) if exc.errno else str(exc)
            log.error("cannot listen", listen=settings.listen, problem=problem)
            return EXIT_LISTEN
        reloading = asyncio.create_task(_reload_on(hangup, app[POLLING], reload))
        await stop.wait()
        reloading.cancel()
        await asyncio.gather(reloading, return_exceptions=True)
    finally:
        await runner.cleanup()
    return EXIT_OK


async def _reload_on(hangup: asyncio.Event, polling: Polling, load: Callable[[], Settings]) -> None:
    """Reload once per SIGHUP; signals that come during a reload make one more."""
    while True:
        await hangup.wait()
        hangup.clear()
        log.info("SIGHUP: reloading the configuration")
        try:
            await polling.reload_from(load)
        except Exception:  # a bug in a reload must not end the reloads, nor the process
            log.exception("reload failed, the running configuration stays")


async def _once(settings: Settings, api_key: KeySource | None) -> int:
    monitor = new_monitor(settings)
    async with (
        upstream_for(settings, api_key) as upstream,
        open_poller(settings, upstream, monitor) as poller,
    ):
        ok = await poller.once()
        sys.stdout.buffer.writelines(render_parts(monitor.publisher.current, openmetrics=False))
        sys.stdout.flush()
    return EXIT_OK if ok else EXIT_FETCH_FAILED
