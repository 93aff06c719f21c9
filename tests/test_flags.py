"""The command line a user of Prometheus' Go exporters expects: toolkit and promslog flag names,
`--help` in groups naming each environment variable, old spellings that still work and warn once,
several listen addresses, the telemetry path, `--version` and the landing page; and every setting
declaring how a reload applies it, which the reload, `--help` and the docs follow."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs
from support.exporter import ExporterFactory
from support.exposition import parse_samples, value
from support.tooling import free_port
from support.waiting import wait_until
from test_cli import env_for, is_ready, run

from exporter import __version__
from exporter.cli import build_parser
from exporter.config.flags import parse
from exporter.config.options import Reload, declared, env_name, named
from exporter.config.settings import ConfigError, Settings, load_settings
from exporter.daemon.lifecycle import APPLY_IN_PLACE, IN_PLACE, KEPT, POLLING, RELOADED
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.identity import Identity
from exporter.web.app import landing_page

P, R = 3, 5
IMG = "c0ffee00-0000-4000-8000-000000000001"
OLD = {
    "--listen": ("--web.listen-address", "listen", "127.0.0.1:1234", ["127.0.0.1:1234"]),
    "--web-config-file": ("--web.config.file", "web_config_file", "web.yml", "web.yml"),
    "--log-level": ("--log.level", "log_level", "warning", "warning"),
    "--log-format": ("--log.format", "log_format", "json", "json"),
}


# --- --help --------------------------------------------------------------------------------------


def help_sections(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`--help` on one line per flag, by section title."""
    monkeypatch.setenv("COLUMNS", "1000")
    text = build_parser().format_help()
    return {part.split(":\n")[0]: part for part in text.split("\n\n") if ":\n" in part}


def entries(section: str) -> list[str]:
    """Each flag's entry of a `--help` section, on one line."""
    return [" ".join(entry.split()) for entry in re.split(r"\n(?=  -)", section)[1:]]


def test_help_groups_the_flags_each_with_its_environment_variable_and_reload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sections = help_sections(monkeypatch)
    groups = ["General", "Polling", "Sharding", "Web server", "Logging"]
    assert [title for title in sections if title in groups] == groups
    for name, option in declared(Settings).items():
        if option.flag is None:
            assert (
                env_name(Settings, name)
                in sections["Environment only (never in the config file, never reloaded)"]
            )
            continue
        (line,) = [e for e in entries(sections[option.group]) if e.split()[0] == option.flag]
        assert line.endswith(f"[env {env_name(Settings, name)}; {option.reload.short}]")


def test_help_shows_the_toolkit_names_and_lists_the_old_ones_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sections = help_sections(monkeypatch)
    options = "\n".join(sections[g] for g in ("Web server", "Logging"))
    for old, (new, *_) in OLD.items():
        assert f"  {new} " in options
        assert f"  {old} " not in options
        assert (
            f"  {old} is now {new}"
            in sections["Deprecated spellings, which still work with one warning at start"]
        )


# --- old spellings -------------------------------------------------------------------------------


@pytest.mark.parametrize("old", sorted(OLD))
def test_an_old_flag_sets_what_its_new_name_sets(old: str) -> None:
    new, name, given, parsed = OLD[old]
    flags, used = parse(build_parser(), [old, given])
    assert (flags[name], used) == (parsed, {old: new})
    flags, used = parse(build_parser(), [new, given])
    assert (flags[name], used) == (parsed, {})


def test_a_switch_stores_what_its_declaration_says() -> None:
    """`--demo` turns a setting on, `--no-clusters` turns one off; neither given sets nothing, so
    the environment and the config file still decide."""
    flags, _ = parse(build_parser(), ["--demo", "--no-clusters"])
    assert (flags["demo"], flags["clusters"]) == (True, False)
    flags, _ = parse(build_parser(), [])
    assert flags.get("clusters") is None
    assert Settings.model_fields["clusters"].default is True


async def test_old_flags_still_work_and_warn_once(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("{}\n", encoding="utf-8")
    args = ["--listen", "127.0.0.1:1234", "--log-level", "warning", "--log-format", "json"]
    code, out, err = await run(
        "--check-config", "--target", "1/2", *args, "--web-config-file", str(web)
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["listen"] == ["127.0.0.1:1234"]
    assert (shown["log_level"], shown["log_format"]) == ("warn", "json")
    assert shown["web_config_file"] == str(web)
    (line,) = err.splitlines()
    warning = json.loads(line)
    assert (warning["level"], warning["msg"]) == ("warn", "deprecated flags: use their new names")
    assert warning["flags"] == ", ".join(
        f"{old} is now {OLD[old][0]}"
        for old in ("--listen", "--log-level", "--log-format", "--web-config-file")
    )


async def test_the_new_names_warn_of_nothing() -> None:
    code, _, err = await run(
        "--check-config",
        "--target",
        "1/2",
        "--web.listen-address",
        ":1",
        "--log.level",
        "warn",
        "--log.format",
        "logfmt",
    )
    assert (code, err) == (0, "")


# --- serving -------------------------------------------------------------------------------------


async def test_several_addresses_serve_the_metrics_at_the_telemetry_path(
    fake: FakeGcore, fake_url: str
) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    ports = [free_port(), free_port()]
    listen = [arg for port in ports for arg in ("--web.listen-address", f"127.0.0.1:{port}")]
    env = env_for(fake_url, GCORE_EXPORTER_REVISION="abc123")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "exporter", "--target", f"{P}/{R}/{IMG}"),
        *listen,
        "--web.telemetry-path",
        "/gpu/metrics",
        env=env,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for url in [f"http://127.0.0.1:{port}" for port in ports]:
                await wait_until(functools.partial(is_ready, http, url), timeout=15, what=url)
                async with http.get(url + "/gpu/metrics") as response:
                    assert response.status == 200
                    samples = parse_samples(await response.text())
                assert value(samples, "gcore_gpu_image_up", image_id=IMG) == 1
                async with http.get(url + "/metrics") as response:
                    assert response.status == 404
                async with http.get(url + "/") as response:
                    page = await response.text()
                    policy = response.headers["Content-Security-Policy"]
                assert policy == "default-src 'none'"
                assert '<a href="gpu/metrics">/gpu/metrics</a>' in page
                assert '<a href="healthz">' in page and '<a href="readyz">' in page
                assert f"<td>{__version__}</td>" in page and "<td>abc123</td>" in page
                assert "<script" not in page
    finally:
        process.terminate()
        await process.wait()


def test_the_landing_page_says_who_runs_and_escapes_what_it_shows() -> None:
    who = Identity("1.2.3", "<b>rev</b>", "2025-01-02", "3.11.9", "linux/x86_64")
    page = landing_page("/metrics", who)
    for shown in ("1.2.3", "&lt;b&gt;rev&lt;/b&gt;", "2025-01-02", "3.11.9", "linux/x86_64"):
        assert f"<td>{shown}</td>" in page
    assert "<b>rev" not in page
    assert 'href="https://github.com/' in page and "/docs" in page


# --- reload declarations -------------------------------------------------------------------------


def test_every_setting_declares_how_a_reload_applies_it() -> None:
    options = declared(Settings)
    assert list(options) == list(Settings.model_fields)
    for name, option in options.items():
        assert isinstance(option.reload, Reload)
        assert option.help, name
        assert bool(option.flag) == bool(option.group), name
        if option.reload is not Reload.ENVIRONMENT:
            assert option.flag, f"{name} may be in the config file, so it has a flag"


def test_a_setting_that_declares_nothing_is_refused() -> None:
    class Bare(BaseModel):
        undeclared: int = 1

    with pytest.raises(TypeError, match="'undeclared' declares 0"):
        declared(Bare)


def test_the_reload_follows_the_declarations() -> None:
    assert set(APPLY_IN_PLACE) == set(IN_PLACE) == set(named(Settings, Reload.IN_PLACE))
    assert set(KEPT) == set(named(Settings, Reload.RESTART) + named(Settings, Reload.ENVIRONMENT))
    assert sorted(RELOADED + KEPT) == sorted(Settings.model_fields)


CHANGED: dict[str, dict[str, Any]] = {
    "targets": {"targets": [f"{P}/{R + 1}"]},
    "interval": {"interval": "2h"},
    "timeout": {"timeout": "5s"},
    "concurrency": {"concurrency": 3},
    "stale_after": {"stale_after": "3h"},
    "max_response_size": {"max_response_size": "1MiB"},
    "discovery_interval": {"discovery_interval": "1h"},
    "task_interval": {"task_interval": "2h"},
    "failed_task_window": {"failed_task_window": "1h"},
    "image_task_pattern": {"image_task_pattern": "snapshot"},
    "keep_acknowledged_tasks": {"keep_acknowledged_tasks": True},
    "log_level": {"log_level": "debug"},
    "listen": {"listen": "127.0.0.1:9999"},
    "telemetry_path": {"telemetry_path": "/other"},
    "web_config_file": {"web_config_file": "/etc/web.yml"},
    "protect_probes": {"protect_probes": True},
    "log_format": {"log_format": "json"},
    "shard": {"shard": 0},
    "total_shards": {"total_shards": 2, "shard": 0},
    "proxy_url": {"proxy_url": "http://127.0.0.1:3128"},
    "metric_allowlist": {"metric_allowlist": ["gcore_gpu_image_up"]},
    "metric_denylist": {"metric_denylist": ["gcore_gpu_image_tag_info"]},
    "tag_keys": {"tag_keys": ["team"]},
    "clusters": {"clusters": True},  # the base below has them off
    "cluster_interval": {"cluster_interval": "5m"},
}
"""A changed value for every setting a config file may hold."""


def test_every_setting_a_file_may_hold_has_a_changed_value_below() -> None:
    assert set(CHANGED) == set(Settings.model_fields) - set(named(Settings, Reload.ENVIRONMENT))


@pytest.mark.parametrize("name", sorted(CHANGED))
async def test_a_reload_applies_each_setting_as_it_declares(
    name: str, fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "gpu"))
    base = {"interval": "1h", "listen": "127.0.0.1:0", "targets": [f"{P}/{R}"], "clusters": False}
    reload = declared(Settings)[name].reload
    async with exporter(**base) as running:
        polling = running.app[POLLING]
        poller, before = polling.poller, getattr(polling.settings, name)
        with capture_logs() as logs:
            changed = await polling.reload(load_settings(**{**base, **CHANGED[name]}))
        if reload is Reload.RESTART:
            assert not changed
            assert getattr(polling.settings, name) == before
            (warning,) = [e for e in logs if e["log_level"] == "warning"]
            assert name in warning["settings"]
            assert polling.poller is poller
        else:
            assert changed
            assert (polling.poller is poller) == (reload is Reload.IN_PLACE)


@pytest.mark.parametrize("name", named(Settings, Reload.ENVIRONMENT))
def test_a_setting_of_the_environment_is_refused_in_the_config_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"{name}: x\n", encoding="utf-8")
    monkeypatch.setenv("GCORE_EXPORTER_CONFIG", str(config))
    with pytest.raises(ConfigError, match=f"{name}.*(environment|inside a config file)"):
        load_settings(demo=True)
