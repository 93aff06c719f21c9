"""Command line: parse flags, validate settings (exit 2 on any problem), then serve or poll once."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import SecretStr

from exporter import __version__
from exporter.config import DEFAULT_PORT, ConfigError, Settings, listen_address, load_settings
from exporter.exposition import render_parts
from exporter.logs import configure_logging
from exporter.runtime import create_daemon, new_monitor, open_scheduler, upstream_for

EXIT_OK, EXIT_FETCH_FAILED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcore-gpu-image-exporter",
        description="Prometheus exporter for Gcore Cloud virtual GPU images. "
        "Every option can also come from the environment or a YAML file (see README).",
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="YAML file with any of the settings below")
    add(
        "--target",
        dest="targets",
        action="append",
        metavar="SPEC",
        help="PROJECT/REGION/IMAGE_ID, PROJECT/REGION (every image there) or IMAGE_ID; repeatable",
    )
    add("--interval", help="time between polls: seconds or a duration like 30s, 5m (default 60s)")
    add("--timeout", help="timeout of one API request (default 10s)")
    add("--concurrency", type=int, help="most API requests in flight (default 8)")
    add(
        "--stale-after",
        dest="stale_after",
        help="how long last known values outlive failed fetches (default 5 x interval)",
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
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gcore-gpu-image-exporter: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = [api_key.get_secret_value()] if api_key else []
    configure_logging(settings.log_level, settings.log_format, secrets)
    if check:
        print(json.dumps(settings.describe(), indent=2))
        return EXIT_OK
    if once:
        return asyncio.run(_once(settings, api_key))
    host, port = listen_address(settings.listen)
    # Modules and classes live as long as the process: keep the collector from rescanning them,
    # which shortens the pauses of full collections while big listings come and go.
    gc.freeze()
    web.run_app(
        create_daemon(settings, api_key),
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=3.0,
        handle_signals=True,
    )
    return EXIT_OK


async def _once(settings: Settings, api_key: SecretStr | None) -> int:
    monitor = new_monitor(settings)
    async with (
        upstream_for(settings, api_key) as upstream,
        open_scheduler(settings, upstream, monitor) as scheduler,
    ):
        result = await scheduler.run_once()
        sys.stdout.buffer.writelines(render_parts(monitor.publisher.current, openmetrics=False))
        sys.stdout.flush()
    return EXIT_OK if result.failed == 0 else EXIT_FETCH_FAILED
