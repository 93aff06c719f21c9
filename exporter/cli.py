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

from exporter.config.flags import build_parser as build_settings_parser
from exporter.config.flags import parse
from exporter.config.keys import KeySource
from exporter.config.settings import ConfigError, Settings, listen_address, load_settings
from exporter.daemon.collector import SurvivorFreeze
from exporter.daemon.lifecycle import POLLING, Polling, create_daemon
from exporter.daemon.wiring import (
    demo_settings,
    new_monitor,
    open_poller,
    proxy_credentials,
    upstream_for,
)
from exporter.identity import PROGRAM, Identity
from exporter.logs import configure_logging
from exporter.metrics.exposition import render_parts
from exporter.web.app import server_options
from exporter.web.guard import WebGuard

EXIT_OK, EXIT_FETCH_FAILED, EXIT_CONFIG, EXIT_LISTEN = 0, 1, 2, 3

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Every setting's flag (see `config.flags`), then the modes that are no setting."""
    parser, groups = build_settings_parser(PROGRAM)
    general = groups["General"]
    mode = general.add_mutually_exclusive_group()
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
    general.add_argument(
        "--version",
        action="version",
        version=Identity.current().print_text(),
        help="print version, revision, build date and Python version, and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    flags, old_flags = parse(build_parser(), argv)
    once, check = flags.pop("once"), flags.pop("check_config")
    try:
        settings = load_settings(**flags)
        api_key = None if settings.demo else settings.read_api_key()
        guard = WebGuard.load(settings.web_config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{PROGRAM}: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = [api_key.current.get_secret_value()] if api_key else []
    secrets += proxy_credentials(settings)
    configure_logging(settings.log_level, settings.log_format, secrets)
    if old_flags:
        log.warning(
            "deprecated flags: use their new names",
            flags=", ".join(f"{old} is now {new}" for old, new in old_flags.items()),
        )
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
    addresses = [(text, *listen_address(text)) for text in settings.listen]
    for text, host, port in addresses:
        try:  # before polling starts: a host that does not resolve is a mistake, not a poll
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            log.error("cannot listen", listen=text, problem=f"{host}: {exc.strerror}")
            return EXIT_LISTEN
    app = create_daemon(settings, api_key, guard, after_round=SurvivorFreeze())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=3.0, **server_options(app))
    await runner.setup()
    try:
        for text, host, port in addresses:
            try:
                await web.TCPSite(runner, host, port, ssl_context=guard.ssl_context).start()
            except OSError as exc:
                problem = os.strerror(exc.errno) if exc.errno else str(exc)
                log.error("cannot listen", listen=text, problem=problem)
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
