"""The console entry point as users run it: a real process, its exit codes, signals and output."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from support.exposition import parse_samples, series, value
from support.fake_api import API_KEY
from support.tooling import free_port, require_tool
from support.waiting import wait_until

from exporter import __version__
from exporter.demo.fake_gcore import FakeGcore, make_image, make_project, make_region, make_task
from exporter.demo.world import TARGETS

P, R = 3, 5
IMG = "c0ffee00-0000-4000-8000-000000000001"
IMG2 = "c0ffee00-0000-4000-8000-000000000002"


def env_for(fake_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    return {**env, "GCORE_API_KEY": API_KEY, "GCORE_BASE_URL": fake_url, **extra}


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *args,
        env=env if env is not None else env_for("https://api.gcore.com"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def serving(
    *args: str, env: dict[str, str]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--log.format",
        "json",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def is_ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_once_prints_metrics_and_exits_0(fake: FakeGcore, fake_url: str) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    code, out, err = await run("--once", "--target", f"{P}/{R}/{IMG}", env=env_for(fake_url))
    assert code == 0, err
    samples = parse_samples(out)
    assert value(samples, "gcore_gpu_image_up", image_id=IMG) == 1
    assert value(samples, "gcore_gpu_image_info", image_id=IMG, name="gpu") == 1


async def test_once_exits_1_when_a_fetch_fails(fake: FakeGcore, fake_url: str) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    missing = "c0ffee00-0000-4000-8000-000000000404"
    targets = ["--target", f"{P}/{R}/{IMG}", "--target", f"{P}/{R}/{missing}"]
    code, out, err = await run("--once", *targets, env=env_for(fake_url))
    assert code == 1
    assert value(parse_samples(out), "gcore_gpu_image_up", image_id=missing) == 0
    assert "reason=not_found" in err
    assert "request_id=" in err


async def test_once_with_star_discovers_polls_and_exits_0(fake: FakeGcore, fake_url: str) -> None:
    fake.projects = [make_project(P, "alpha")]
    fake.regions = [make_region(R, "with gpu"), make_region(R + 1, "gpu announced", baremetal=True)]
    fake.unserved = {("virtual", R + 1)}  # no GPU service there: no failure
    fake.put_image(P, R, make_image(IMG, "gpu"))
    fake.put_image(P, R + 1, make_image(IMG2, "metal"), kind="baremetal")
    fake.put_task(
        make_task(
            "t-1",
            "ERROR",
            "download_image",
            project_id=P,
            region_id=R,
            created_on=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            finished_on="",
        )
    )
    targets = ["--target", "*", "--target", "baremetal:*"]
    code, out, err = await run("--once", *targets, env=env_for(fake_url))
    assert code == 0, err
    samples = parse_samples(out)
    assert value(samples, "gcore_gpu_image_info", image_id=IMG, kind="virtual") == 1
    assert value(samples, "gcore_gpu_image_info", image_id=IMG2, kind="baremetal") == 1
    assert value(samples, "gcore_exporter_scopes", state="unavailable") == 1
    assert value(samples, "gcore_gpu_image_task_failed_info", task_id="t-1") == 1
    assert value(samples, "gcore_gpu_project_info", project_id=str(P)) == 1


@pytest.mark.parametrize(("failing", "code"), [("projects", 1), ("regions", 1), ("tasks", 0)])
async def test_once_exit_status_counts_discovery_but_not_the_tasks_list(
    fake: FakeGcore, fake_url: str, failing: str, code: int
) -> None:
    fake.projects = [make_project(P, "alpha")]
    fake.regions = [make_region(R, "with gpu")]
    fake.put_image(P, R, make_image(IMG, "gpu"))
    fake.inject(f"^/cloud/v1/{failing}", 403, times=None)
    exit_code, out, err = await run("--once", "--target", "*", env=env_for(fake_url))
    assert exit_code == code, err
    assert value(parse_samples(out), "gcore_exporter_discovery_up", endpoint=failing) == 0


@pytest.mark.parametrize(
    ("args", "env_extra", "expected"),
    [
        (["--interval", "soon"], {}, ["interval: not a duration"]),
        (["--interval", "0", "--concurrency", "0"], {}, ["interval:", "concurrency:"]),
        (["--target", "a/b/c/d"], {}, ["targets.0: not a target: write PROJECT/REGION/IMAGE_ID"]),
        ([], {"GCORE_BASE_URL": "http://api.gcore.com"}, ["GCORE_BASE_URL: plain http would"]),
        ([], {"GCORE_EXPORTER_LISTEN": "nowhere"}, ["listen: not HOST:PORT"]),
    ],
)
async def test_invalid_configuration_exits_2_with_one_line_per_problem(
    args: list[str], env_extra: dict[str, str], expected: list[str]
) -> None:
    env = env_for("https://api.gcore.com", GCORE_EXPORTER_TARGETS="1/2", **env_extra)
    code, out, err = await run("--once", *args, env=env)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == len(expected)
    for line, fragment in zip(lines, expected, strict=True):
        assert line.startswith("gcore-gpu-image-exporter: config error: ")
        assert fragment in line
        assert "(got " in line
    assert "Traceback" not in err
    assert out == ""


async def test_missing_key_and_broken_yaml_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    code, _, err = await run("--target", "1/2", env=env)
    assert (code, "GCORE_API_KEY or GCORE_API_KEY_FILE" in err) == (2, True)
    broken = tmp_path / "config.yaml"
    broken.write_text("targets: [1/2\n")
    code, _, err = await run("--config", str(broken), env=env_for("https://api.gcore.com"))
    assert code == 2
    assert "is not valid YAML" in err
    assert len(err.strip().splitlines()) == 1


async def test_check_config_prints_resolved_settings_with_the_key_masked(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets: [1/2, 1/2/abc, 3/4/def]\ninterval: 2m\n")
    env = env_for("https://api.gcore.com", GCORE_EXPORTER_INTERVAL="90s")
    code, out, err = await run(
        "--check-config", "--config", str(config), "--interval", "30s", env=env
    )
    assert code == 0, err
    assert API_KEY not in out + err
    assert '"api_key": "**********"' in out
    assert '"interval": 30.0' in out
    assert '"stale_after": 150.0' in out
    assert '"3/4/def"' in out
    assert '"1/2/abc"' not in out  # covered by the 1/2 listing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_or_sigint_stops_the_daemon_with_exit_0(
    fake: FakeGcore, fake_url: str, signum: signal.Signals
) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    env = env_for(fake_url)
    async with serving("--target", f"{P}/{R}/{IMG}", "--interval", "1s", env=env) as (proc, url):
        async with aiohttp.ClientSession() as http:
            await wait_until(lambda: is_ready(http, url), timeout=15, what="readiness")
        proc.send_signal(signum)
        code = await asyncio.wait_for(proc.wait(), 5)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
    assert code == 0
    assert "Unclosed" not in err
    assert "Traceback" not in err


async def test_api_key_never_appears_in_logs_at_debug(fake: FakeGcore, fake_url: str) -> None:
    fake.api_key = "the-right-key"  # ours is refused: 401s all the way
    fake.inject("/tasks/", 500, times=None)
    fake.put_task(make_task("t-1"))
    targets = ["--target", f"{P}/{R}/{IMG}", "--target", f"{P}/{R + 1}"]
    code, out, err = await run("--once", "--log.level", "debug", *targets, env=env_for(fake_url))
    assert code == 1
    assert "unauthorized" in err
    assert API_KEY not in out + err


async def test_demo_serves_metrics_that_promtool_accepts(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    async with serving("--demo", env=env) as (_, url), aiohttp.ClientSession() as http:
        await wait_until(lambda: is_ready(http, url), timeout=15, what="the demo's readiness")
        async with http.get(url + "/metrics") as response:
            text = await response.text()
    samples = parse_samples(text)
    assert (
        len(
            {ls["image_id"] for ls in [dict(k[1]) for k in samples if k[0] == "gcore_gpu_image_up"]}
        )
        == 20  # 19, and the image a cluster boots from that is deleted after a minute
    )
    assert value(samples, "gcore_exporter_scopes", state="unavailable") == 8
    assert series(samples, "gcore_gpu_image_task_failed_info") != []
    check = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await check.communicate(text.encode())
    assert check.returncode == 0, output.decode()
    assert output.decode().strip() == ""


async def test_demo_check_config_shows_the_demo_targets() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    code, out, err = await run("--demo", "--check-config", "--target", "9/9", env=env)
    assert code == 0, err
    settings = json.loads(out)
    assert settings["targets"] == list(TARGETS) == ["*", "baremetal:*"]  # not the ignored 9/9


async def test_demo_once_covers_the_whole_simulated_account() -> None:
    """As the README says: two projects, four regions (one without GPU service, one whose flags
    say no GPU but which holds images), both kinds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    code, out, err = await run("--demo", "--once", env=env)
    assert code == 0, err
    samples = parse_samples(out)
    assert value(samples, "gcore_exporter_images") == 20
    assert len(series(samples, "gcore_gpu_image_up", region_id="40")) == 2  # flags say no GPU
    assert {ls["kind"] for ls in series(samples, "gcore_gpu_image_info")} == {
        "virtual",
        "baremetal",
    }
    assert len(series(samples, "gcore_gpu_project_info")) == 2
    # virtual: region 30; bare metal: regions 10, 30 and 40; each in both projects
    assert value(samples, "gcore_exporter_scopes", state="unavailable") == 8
    assert series(samples, "gcore_gpu_image_task_failed_info") != []


async def test_version_prints_version_revision_build_date_and_python() -> None:
    env = env_for("https://api.gcore.com", GCORE_EXPORTER_REVISION="abc123")
    code, out, _ = await run("--version", env={**env, "GCORE_EXPORTER_BUILD_DATE": "2025-01-02"})
    assert code == 0
    assert out.splitlines() == [
        f"gcore-gpu-image-exporter, version {__version__} (revision: abc123)",
        "  build date:       2025-01-02",
        f"  python version:   {platform.python_version()}",
        f"  platform:         {platform.system().lower()}/{platform.machine()}",
    ]


async def test_once_and_check_config_exclude_each_other() -> None:
    code, _, err = await run("--once", "--check-config", "--target", "1/2")
    assert code == 2
    assert "not allowed with argument" in err


# --- failing cleanly -----------------------------------------------------------------------------


def error_events(err: str) -> list[dict[str, object]]:
    """The JSON log lines of a run; any line that is not one fails the test."""
    return [json.loads(line) for line in err.strip().splitlines()]


async def test_a_port_in_use_is_one_line_and_exit_3(fake: FakeGcore, fake_url: str) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run(
            "--target",
            f"{P}/{R}/{IMG}",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.format",
            "json",
            env=env_for(fake_url),
        )
    assert code == 3
    (event,) = error_events(err)
    assert event["msg"] == "cannot listen"
    assert event["listen"] == f"127.0.0.1:{port}"
    assert event["problem"] == "Address already in use"
    assert out == ""


async def test_a_host_that_does_not_resolve_is_one_line_and_exit_3(fake_url: str) -> None:
    code, _, err = await run(
        "--target",
        f"{P}/{R}",
        "--web.listen-address",
        "no-such-host.invalid:10150",
        "--log.format",
        "json",
        env=env_for(fake_url),
    )
    assert code == 3
    (event,) = error_events(err)  # nothing was polled: the address was checked first
    assert event["msg"] == "cannot listen"
    assert str(event["problem"]).startswith("no-such-host.invalid: ")


async def test_an_endless_key_file_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    code, _, err = await run(
        "--once", "--target", "1/2", env={**env, "GCORE_API_KEY_FILE": "/dev/zero"}
    )
    assert code == 2
    assert err == (
        "gcore-gpu-image-exporter: config error: GCORE_API_KEY_FILE: '/dev/zero': "
        "larger than 8192 bytes, which no API key is\n"
    )


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
interval: [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""  # 346 bytes that stand for 387 million strings


async def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BILLION_LAUGHS, encoding="utf-8")
    code, _, err = await run("--check-config", "--target", "1/2", "--config", str(config))
    assert code == 2
    (line,) = err.splitlines()
    assert line.endswith("more than 100000 values once YAML aliases are expanded")


# --- SIGHUP --------------------------------------------------------------------------------------


class Lines:
    """Collects a process's stderr lines as they come."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode())

    def events(self, name: str) -> list[dict[str, object]]:
        found = [json.loads(line) for line in self.lines if line.startswith("{")]
        return [event for event in found if event["msg"] == name]

    async def close(self) -> None:
        await asyncio.wait_for(self._task, 10)


async def test_sighup_reloads_targets_and_refuses_a_bad_file(
    fake: FakeGcore, fake_url: str, tmp_path: Path
) -> None:
    other = "c0ffee00-0000-4000-8000-000000000002"
    fake.put_image(P, R, make_image(IMG, "first"))
    fake.put_image(P, R, make_image(other, "second"))
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: [{P}/{R}/{IMG}]\ninterval: 1h\n", encoding="utf-8")
    async with (
        serving("--config", str(config), env=env_for(fake_url)) as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        assert proc.stderr is not None
        log = Lines(proc.stderr)
        await wait_until(lambda: is_ready(http, url), timeout=15, what="readiness")

        async def images() -> set[str]:
            async with http.get(url + "/metrics") as response:
                samples = parse_samples(await response.text())
            return {dict(k[1])["image_id"] for k in samples if k[0] == "gcore_gpu_image_up"}

        assert await images() == {IMG}
        config.write_text(f"targets: [{P}/{R}/{other}]\ninterval: 1h\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: bool(log.events("configuration reloaded")), what="the reload")
        assert await images() == {other}
        await wait_until(lambda: len(log.events("poll done")) == 2, what="the new first round")
        config.write_text("targets: [1/x]\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: bool(log.events("configuration refused, the running one stays")),
            what="the refusal",
        )
        (refused,) = log.events("configuration refused, the running one stays")
        assert refused["problems"] == [
            "targets.0: not a target: write PROJECT/REGION/IMAGE_ID, PROJECT/REGION or IMAGE_ID, "
            "or *, PROJECT/* or */REGION, each optionally after baremetal: (got '1/x')"
        ]
        assert await images() == {other}
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await log.close()
    assert not [line for line in log.lines if "Traceback" in line]
