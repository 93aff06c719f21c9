"""Helpers for HTTP server tests: a fixed snapshot source, the app on loopback, captured logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from aiohttp import web

from exporter.logs import configure_logging
from exporter.metrics.families import FAMILIES
from exporter.metrics.snapshot import Snapshot, by_family
from exporter.web.app import GUARD, server_options

OWN = b"# HELP gcore_exporter_build_info Build.\n# TYPE gcore_exporter_build_info gauge\n"


@dataclass
class StaticSource:
    current: Snapshot


def snapshot(body: bytes = b"", *, ready: bool = True) -> Snapshot:
    """A snapshot whose exposition is `body` (one image's first family), after the own metrics."""
    image = (body,) + (b"",) * (len(FAMILIES) - 1)
    return Snapshot(1, by_family((image,) if body else ()), OWN, OWN, ready=ready)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a loopback port, as the CLI serves it (TLS from its web config); its base URL."""
    context = app[GUARD].ssl_context
    runner = web.AppRunner(app, **server_options(app))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        port = runner.addresses[0][1]
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Logs:
    """The process's JSON log lines, as `configure_logging` writes them to stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._events: list[dict[str, Any]] = []
        self.text = ""

    @property
    def events(self) -> list[dict[str, Any]]:
        err = self._capsys.readouterr().err
        self.text += err
        self._events += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        return self._events

    def has(self, event: str) -> bool:
        return any(event in str(e.get("msg")) for e in self.events)

    def at_least(self, level: str) -> list[dict[str, Any]]:
        order = ["debug", "info", "warn", "error"]
        return [e for e in self.events if order.index(e["level"]) >= order.index(level)]


@contextmanager
def json_logs(capsys: pytest.CaptureFixture[str], level: str = "debug") -> Iterator[Logs]:
    configure_logging(level, "json")
    try:
        yield Logs(capsys)
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
