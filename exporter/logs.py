"""Structured logs as Prometheus' Go exporters write them (promslog: logfmt or JSON with `time`,
`level`, `source`, `msg`), or readable lines on a terminal; never the API key."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog
from structlog.processors import CallsiteParameter
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


# promslog's four levels; Python's `warning` and `critical` are spelled as it spells them.
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
_PROMSLOG_LEVEL = {"warning": "warn", "critical": "error"}
_FIRST = ("time", "level", "source", "msg")


def set_level(level: str) -> None:
    """Change the log level of the running process (a reloaded configuration)."""
    logging.getLogger().setLevel(_LEVELS.get(level, logging.ERROR))


def _promslog_keys(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    """promslog's level names, `source` as FILE:LINE, and its four keys first."""
    event["level"] = _PROMSLOG_LEVEL.get(event["level"], event["level"])
    filename, lineno = event.pop("filename", None), event.pop("lineno", None)
    if filename is not None:
        event["source"] = f"{filename}:{lineno}"
    first = {key: event[key] for key in _FIRST if key in event}
    first.update(event)
    return first


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Log at `level` to stderr as `fmt`: `logfmt`, `json` or `console`."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.CallsiteParameterAdder(
            [CallsiteParameter.FILENAME, CallsiteParameter.LINENO]
        ),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        structlog.processors.EventRenamer("msg"),
        # Tracebacks become text before the redactor sees the event, in every format.
        structlog.processors.format_exc_info,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "logfmt":
        renderer = structlog.processors.LogfmtRenderer(bool_as_flag=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), event_key="msg", timestamp_key="time"
        )
    for secret in secrets:
        redact(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _promslog_keys,
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
