"""Logs: structured, in both formats, and never carrying the API key."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from exporter.config.settings import Settings
from exporter.logs import REDACTED, configure_logging

DEFAULT_FORMAT = Settings.model_fields["log_format"].default
KEY = "key-0f9e8d7c-never-print-me"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def test_json_logs_are_one_object_per_line_with_promslogs_keys_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json", [KEY])
    structlog.get_logger("t").info("poll done", ok=3, failed=1)
    structlog.get_logger("t").debug("hidden at info")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert list(event)[:4] == ["time", "level", "source", "msg"]
    assert (event["msg"], event["ok"], event["failed"], event["level"]) == (
        "poll done",
        3,
        1,
        "info",
    )
    assert event["time"].endswith("Z")
    assert event["source"] == f"test_logs.py:{_line_of('poll done')}"


def _line_of(text: str) -> int:
    """The line of this file that logs `text` (the `source` a log line must name)."""
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if f'.info("{text}"' in line)


def logfmt(line: str) -> dict[str, str]:
    """A logfmt line's keys and values, in order."""
    return dict(part.split("=", 1) for part in shlex.split(line))


def test_logfmt_is_the_default_with_promslogs_keys_and_levels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings.model_fields["log_level"].default, DEFAULT_FORMAT)
    structlog.get_logger("t").info("round done", ok=3, why="two words")
    structlog.get_logger("t").warning("slow")
    logging.getLogger("aiohttp.client").error("foreign %s", "line")
    first, warned, foreign = map(logfmt, capsys.readouterr().err.splitlines())
    assert list(first)[:4] == ["time", "level", "source", "msg"]
    assert first["time"].endswith("Z")
    assert first["source"] == f"test_logs.py:{_line_of('round done')}"
    assert (first["level"], first["msg"], first["ok"], first["why"]) == (
        "info",
        "round done",
        "3",
        "two words",
    )
    assert warned["level"] == "warn"
    assert (foreign["level"], foreign["msg"]) == ("error", "foreign line")
    assert foreign["source"].startswith("test_logs.py:")


def test_warn_level_drops_info_and_keeps_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warn", "logfmt")
    structlog.get_logger("t").info("dropped")
    structlog.get_logger("t").warning("kept")
    (line,) = capsys.readouterr().err.splitlines()
    assert "msg=kept" in line


@pytest.mark.parametrize("fmt", ["logfmt", "json", "console"])
def test_the_key_is_redacted_from_fields_messages_and_tracebacks(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    configure_logging("debug", fmt, [KEY])
    log = structlog.get_logger("t")
    log.info(f"request with {KEY}", header=f"APIKey {KEY}", nested={"k": KEY})
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("aiohttp.client").warning("foreign %s", KEY)
    err = capsys.readouterr().err
    assert KEY not in err
    assert err.count(REDACTED) >= 5
    assert "RuntimeError" in err
