"""Logs: structured, in both formats, and never carrying the API key."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from exporter.logs import REDACTED, configure_logging

KEY = "key-0f9e8d7c-never-print-me"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", [KEY])
    structlog.get_logger("t").info("poll done", ok=3, failed=1)
    structlog.get_logger("t").debug("hidden at info")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert (event["event"], event["ok"], event["failed"], event["level"]) == (
        "poll done",
        3,
        1,
        "info",
    )
    assert event["timestamp"].endswith("Z")


@pytest.mark.parametrize("fmt", ["json", "console"])
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
