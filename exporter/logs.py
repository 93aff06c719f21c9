"""Structured logs: JSON for machines, readable lines on a terminal, and never the API key."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "**********"


class Redactor:
    """Replaces every occurrence of a secret in the event's strings: the last line of defence."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def learn(self, secret: str) -> None:
        """Redact `secret` too from now on (a rotated key; the old one stays redacted)."""
        if secret and secret not in self._secrets:
            self._secrets += (secret,)

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        if self._secrets:
            for key, value in event.items():
                text = value if isinstance(value, str) else None
                if text is None and not isinstance(value, int | float | bool | None):
                    text = str(value)
                if text is not None and any(s in text for s in self._secrets):
                    for secret in self._secrets:
                        text = text.replace(secret, REDACTED)
                    event[key] = text
        return event


# The process has one log configuration, so one redactor: a key rotated later is taught to it.
_REDACTOR = Redactor()


def redact(secret: str) -> None:
    """Keep `secret` out of every log line from now on."""
    _REDACTOR.learn(secret)


def set_level(level: str) -> None:
    """Change the log level of the running process (a reloaded configuration)."""
    logging.getLogger().setLevel(level.upper())


def configure_logging(level: str, fmt: str | None, secrets: Iterable[str] = ()) -> None:
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text before the redactor sees the event, in both formats.
        structlog.processors.format_exc_info,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    for secret in secrets:
        redact(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _REDACTOR,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
