"""Polling for the life of the process, across reloads of the configuration (SIGHUP).

The monitor (image store, publisher, telemetry) lives as long as the process. Each setting declares
how a reload applies it (`Option.reload`): in place, or by replacing the poller and its HTTP
session (a round at once; images that stay keep their series without a gap, images no target
covers any more leave /metrics), or not until a restart. The rate-limit gate is never replaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final

import structlog
from aiohttp import web
from pydantic import SecretStr

from exporter.config.keys import KeyFile, KeySource
from exporter.config.options import Reload, named
from exporter.config.settings import ConfigError, Settings, cluster_interval
from exporter.daemon.wiring import (
    Monitor,
    RetryFor,
    Upstream,
    new_monitor,
    open_poller,
    polled_targets,
    retry_policy,
    upstream_for,
)
from exporter.gcore.transport import RateGate
from exporter.logs import set_level
from exporter.polling.cadences import Poller
from exporter.polling.scheduler import Scheduler
from exporter.web.app import create_app
from exporter.web.guard import WebGuard

log = structlog.get_logger(__name__)

KEPT: Final = named(Settings, Reload.RESTART) + named(Settings, Reload.ENVIRONMENT)
"""Settings a reload does not change (each declares so on its field): the socket is bound, the
log handler installed, the web config followed on its own; flags and environment are fixed."""

APPLY_IN_PLACE: Final[dict[str, Callable[[Monitor, Settings], None]]] = {
    "stale_after": lambda monitor, new: setattr(
        monitor.store, "stale_after", new.effective_stale_after
    ),
    "log_level": lambda monitor, new: set_level(new.log_level),
}
"""How each setting declared `Reload.IN_PLACE` is applied without a new poller."""


def _targets(settings: Settings) -> tuple[set[Any], ...] | None:
    """Targets as a reload compares them: order is no change, and the demo's are its own."""
    if settings.demo:
        return None
    targets = settings.resolved_targets()
    return set(targets.images), set(targets.scopes), set(targets.wildcards)


_EFFECTIVE: Final[dict[str, Callable[[Settings], Any]]] = {
    "targets": _targets,
    "timeout": lambda s: s.effective_timeout,
    "task_interval": lambda s: s.effective_task_interval,
    "stale_after": lambda s: s.effective_stale_after,
    "cluster_interval": cluster_interval,
}
"""The value a reloadable setting takes effect as, where it is not the field itself."""

IN_PLACE: Final = named(Settings, Reload.IN_PLACE)
RELOADED: Final = IN_PLACE + named(Settings, Reload.NEW_POLLER)


def _reloadable(settings: Settings) -> dict[str, Any]:
    """What a reload applies, as it takes effect."""
    return {n: _EFFECTIVE.get(n, operator.attrgetter(n))(settings) for n in RELOADED}


class Polling:
    def __init__(
        self,
        settings: Settings,
        api_key: SecretStr | KeySource | None,
        monitor: Monitor,
        wall_clock: Callable[[], float] = time.time,
        retry: RetryFor = retry_policy,
    ) -> None:
        self.settings = settings
        self._retry = retry
        self.monitor = monitor
        self._api_key = api_key
        self._now = wall_clock
        self._gate = RateGate()
        self._lasting = AsyncExitStack()  # the upstream and the key file's watcher
        self._running = AsyncExitStack()  # the poller, its session and its task
        self._upstream: Upstream | None = None
        self._poller: Poller | None = None
        self._switching = asyncio.Lock()

    @property
    def poller(self) -> Poller:
        """The poller running now: a reload replaces it."""
        if self._poller is None:
            raise RuntimeError("polling has not started")
        return self._poller

    @property
    def scheduler(self) -> Scheduler:
        return self.poller.scheduler

    async def __aenter__(self) -> Polling:
        try:
            stack = self._lasting
            self._upstream = await stack.enter_async_context(
                upstream_for(self.settings, self._api_key)
            )
            if isinstance(self._api_key, KeyFile):
                stack.push_async_callback(_cancel, asyncio.create_task(self._api_key.watch()))
            await self._start(self.settings)
        except BaseException:
            await self._lasting.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        async with self._switching:
            await self._running.aclose()
            await self._lasting.aclose()

    async def reload_from(self, load: Callable[[], Settings]) -> bool:
        """Load settings (off the event loop) and apply them; a refused file changes nothing."""
        try:
            settings = await asyncio.to_thread(load)
        except ConfigError as exc:
            log.error(
                "configuration refused, the running one stays",
                config=str(self.settings.config) if self.settings.config else None,
                problems=exc.problems,
            )
            return False
        return await self.reload(settings)

    async def reload(self, settings: Settings) -> bool:
        """Apply what `settings` change of the reloadable settings; True if anything changed."""
        async with self._switching:
            old = self.settings
            ignored = [n for n in KEPT if getattr(settings, n) != getattr(old, n)]
            if ignored:
                log.warning("configuration needs a restart to apply", settings=ignored)
            before, after = _reloadable(old), _reloadable(settings)
            changed = [name for name in after if after[name] != before[name]]
            self.settings = settings.model_copy(update={n: getattr(old, n) for n in KEPT})
            for apply in APPLY_IN_PLACE.values():
                apply(self.monitor, settings)
            if not set(IN_PLACE).issuperset(changed):
                previous = self.poller
                await self._running.aclose()
                await self._start(self.settings, previous)
            log.info("configuration reloaded", changed=changed, images=len(self.monitor.store))
            return bool(changed)

    async def _start(self, settings: Settings, previous: Poller | None = None) -> None:
        assert self._upstream is not None
        upstream = self._upstream
        if not settings.demo:
            upstream = dataclasses.replace(upstream, targets=polled_targets(settings))
        stack = AsyncExitStack()
        try:
            poller = await stack.enter_async_context(
                open_poller(
                    settings,
                    upstream,
                    self.monitor,
                    self._now,
                    gate=self._gate,
                    previous=previous,
                    retry=self._retry,
                )
            )
            stack.push_async_callback(_cancel, asyncio.create_task(poller.run()))
        except BaseException:
            await stack.aclose()
            raise
        self._running, self._poller = stack, poller


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


POLLING = web.AppKey("polling", Polling)


def create_daemon(
    settings: Settings,
    api_key: SecretStr | KeySource | None,
    guard: WebGuard | None = None,
    wall_clock: Callable[[], float] = time.time,
    retry: RetryFor = retry_policy,
    after_round: Callable[[], None] = lambda: None,
) -> web.Application:
    """The HTTP app with polling started and stopped through its `cleanup_ctx`.

    `guard` is the web config already loaded (by the CLI, to validate it first); without it the
    settings' `web_config_file` is loaded here, so no caller serves unprotected by omission.
    `retry` makes each poller's retry policy from its settings.
    `after_round` is the process's memory policy (the CLI's), run after each poll round.
    """
    monitor = new_monitor(settings, wall_clock, after_round)
    guard = guard or WebGuard.load(settings.web_config_file)
    app = create_app(
        monitor.publisher,
        guard,
        protect_probes=settings.protect_probes,
        telemetry_path=settings.telemetry_path,
    )
    polling = Polling(settings, api_key, monitor, wall_clock, retry)
    app[POLLING] = polling

    async def run_polling(app: web.Application) -> AsyncIterator[None]:
        async with polling:
            yield

    app.cleanup_ctx.append(run_polling)
    return app
