"""The API key file: read once with a size cap, then followed when it is rotated on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs
from support.exposition import parse_samples, value
from support.fake_api import API_KEY
from support.waiting import wait_until

from exporter.config.keys import MAX_KEY_BYTES, KeyFile, KeySource
from exporter.config.settings import ConfigError, load_settings
from exporter.daemon.lifecycle import POLLING, Polling, create_daemon
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.logs import REDACTED, configure_logging
from exporter.metrics.exposition import render

NEW_KEY = "rotated-key-77c1d2e3-SECRET"
P, R = 3, 5
IMG = "c0ffee00-0000-4000-8000-0000000000aa"


def mount_secret(directory: Path, key: str) -> Path:
    """Write `key` as the kubelet updates a mounted secret: a new directory, a `..data` swap."""
    directory.mkdir(exist_ok=True)
    versions = sorted(directory.glob("..2026_*"))
    number = int(versions[-1].name.rpartition("_")[2]) + 1 if versions else 0
    fresh = directory / f"..2026_{number:04d}"
    fresh.mkdir()
    (fresh / "api-key").write_text(f"{key}\n", encoding="utf-8")
    swap = directory / "..data_tmp"
    swap.symlink_to(fresh.name)
    swap.replace(directory / "..data")
    for old in versions:
        shutil.rmtree(old)
    link = directory / "api-key"
    if not link.is_symlink():
        link.symlink_to("..data/api-key")
    return link


def key_file(path: Path) -> KeyFile:
    keys = KeyFile.open(path, every=0.02)
    assert isinstance(keys, KeyFile)
    return keys


def rotate(path: Path, key: str, how: str) -> None:
    if how == "symlink swap":
        mount_secret(path.parent, key)
    else:
        path.write_text(key, encoding="utf-8")


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secret"
    directory.mkdir()
    return directory


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


# --- read once, capped ---------------------------------------------------------------------------


def key_file_problem(monkeypatch: pytest.MonkeyPatch, path: str) -> str:
    monkeypatch.setenv("GCORE_API_KEY_FILE", path)
    settings = load_settings(targets=["1/2"])
    with pytest.raises(ConfigError) as info:
        settings.read_api_key()
    (line,) = info.value.problems
    return line


def test_an_endless_key_file_is_refused_after_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    line = key_file_problem(monkeypatch, "/dev/zero")
    assert line == f"GCORE_API_KEY_FILE: '/dev/zero': larger than {MAX_KEY_BYTES} bytes, " + (
        "which no API key is"
    )


def test_a_key_file_just_over_the_cap_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    big = tmp_path / "key"
    big.write_text("k" * (MAX_KEY_BYTES + 1), encoding="utf-8")
    assert "larger than" in key_file_problem(monkeypatch, str(big))
    big.write_text("k" * MAX_KEY_BYTES, encoding="utf-8")
    assert KeyFile.open(big).current.get_secret_value() == "k" * MAX_KEY_BYTES


def test_a_key_file_that_is_not_utf8_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "key"
    bad.write_bytes(b"\xff\xfekey")
    assert key_file_problem(monkeypatch, str(bad)).endswith(": not UTF-8 text")


def test_a_key_from_a_fifo_is_read_once_and_not_followed(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)

    def write_once() -> None:
        with fifo.open("w", encoding="utf-8") as writer:
            writer.write(f"{API_KEY}\n")

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    keys = KeyFile.open(fifo)
    writer.join(timeout=10)
    assert type(keys) is KeySource  # a second read would wait for a writer for ever
    assert keys.current.get_secret_value() == API_KEY


# --- rotation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["symlink swap", "rewrite"])
async def test_a_rotated_key_is_taken_and_logged_without_the_key(
    secret_dir: Path, how: str
) -> None:
    keys = key_file(mount_secret(secret_dir, API_KEY))
    assert not await keys.check()  # unchanged
    rotate(keys.path, NEW_KEY, how)
    with capture_logs() as logs:
        assert await keys.check()
    assert keys.current.get_secret_value() == NEW_KEY
    assert logs == [{"event": "API key changed", "file": str(keys.path), "log_level": "info"}]
    assert not await keys.check()


async def test_a_touched_file_with_the_same_key_changes_nothing(secret_dir: Path) -> None:
    keys = key_file(mount_secret(secret_dir, API_KEY))
    with capture_logs() as logs:
        mount_secret(secret_dir, API_KEY)
        assert not await keys.check()
    assert logs == []
    assert keys.current.get_secret_value() == API_KEY


@pytest.mark.parametrize("content", ["", "\n", "x" * (MAX_KEY_BYTES + 1), None])
async def test_an_unusable_new_key_file_keeps_the_key_and_warns_once(
    secret_dir: Path, content: str | None
) -> None:
    keys = key_file(mount_secret(secret_dir, API_KEY))
    if content is None:
        shutil.rmtree(secret_dir)
    else:
        mount_secret(secret_dir, content)
    with capture_logs() as logs:
        assert not await keys.check()
        assert not await keys.check()
    (warning,) = logs
    assert warning["event"] == "API key file unusable, keeping the current key"
    assert keys.current.get_secret_value() == API_KEY
    mount_secret(secret_dir, NEW_KEY)  # fixed: taken at the next check
    assert await keys.check()
    assert keys.current.get_secret_value() == NEW_KEY


async def test_the_log_redactor_learns_the_rotated_key(
    secret_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = key_file(mount_secret(secret_dir, API_KEY))
    configure_logging("info", "json", [keys.current.get_secret_value()])
    mount_secret(secret_dir, NEW_KEY)
    assert await keys.check()
    structlog.get_logger("t").info("header", value=f"APIKey {NEW_KEY}", old=API_KEY)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[-1]["value"] == f"APIKey {REDACTED}"
    assert lines[-1]["old"] == REDACTED
    assert NEW_KEY not in str(lines)


# --- the running exporter ------------------------------------------------------------------------


@asynccontextmanager
async def polling_with(keys: KeySource) -> AsyncIterator[Polling]:
    """The daemon's polling (no HTTP server) with `keys`, after its first round."""
    settings = load_settings(targets=[f"{P}/{R}/{IMG}"], interval="1h")
    app = create_daemon(settings, keys)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        polling = app[POLLING]
        await asyncio.wait_for(polling.scheduler.wait_for_rounds(1), 10)
        yield polling
    finally:
        await runner.cleanup()


def up(polling: Polling) -> float | None:
    text = render(polling.monitor.publisher.current, openmetrics=False).decode()
    return value(parse_samples(text), "gcore_gpu_image_up", image_id=IMG)


async def test_the_exporter_follows_a_rotated_key_without_a_restart(
    fake: FakeGcore, fake_url: str, secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_BASE_URL", fake_url)
    monkeypatch.setenv("GCORE_API_KEY_FILE", str(mount_secret(secret_dir, API_KEY)))
    fake.api_key = API_KEY
    fake.put_image(P, R, make_image(IMG, "gpu"))
    keys = key_file(secret_dir / "api-key")
    async with polling_with(keys) as polling:
        assert up(polling) == 1
        fake.api_key = NEW_KEY  # the old key is revoked: 401 until the secret is updated
        await asyncio.wait_for(polling.scheduler.start_round(), 10)
        assert up(polling) == 0
        mount_secret(secret_dir, NEW_KEY)
        await wait_until(lambda: keys.current.get_secret_value() == NEW_KEY, what="rotation")
        await asyncio.wait_for(polling.scheduler.start_round(), 10)
        assert up(polling) == 1


async def test_the_once_mode_reads_a_key_from_process_substitution(
    fake: FakeGcore, fake_url: str
) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    script = 'GCORE_API_KEY_FILE=<(printf "%s\\n" "$KEY") exec "$PYTHON" -m exporter "$@"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    env |= {"KEY": API_KEY, "PYTHON": sys.executable, "GCORE_BASE_URL": fake_url}
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        "bash",
        "--once",
        "--target",
        f"{P}/{R}/{IMG}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert value(parse_samples(out.decode()), "gcore_gpu_image_up", image_id=IMG) == 1


async def test_a_failing_check_does_not_end_the_watch(
    secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = key_file(mount_secret(secret_dir, API_KEY))
    calls = 0
    real_check = keys.check

    async def flaky_check() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await real_check()

    monkeypatch.setattr(keys, "check", flaky_check)
    watching = asyncio.create_task(keys.watch())
    try:
        with capture_logs() as logs:
            mount_secret(secret_dir, NEW_KEY)
            await wait_until(lambda: keys.current.get_secret_value() == NEW_KEY, what="rotation")
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    assert logs[0]["event"] == "API key check failed"
