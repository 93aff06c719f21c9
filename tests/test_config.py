"""Settings: durations, precedence of flags/env/YAML/defaults, targets, problems, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config.settings import (
    DEFAULT_IMAGE_TASK_PATTERN,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_VALUES,
    BareImage,
    ConfigError,
    Settings,
    listen_address,
    load_settings,
    parse_duration,
    parse_target,
)
from exporter.config.yaml_file import MAX_CONFIG_DEPTH
from exporter.vocabulary import ImageKey, Scope, Wildcard

API_KEY = "sekrit-93be0f1a-API-KEY"
IMG = "f0e1d2c3-aaaa-4bbb-8ccc-0123456789ab"
IMG2 = "f0e1d2c3-aaaa-4bbb-8ccc-000000000002"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def problems(**cli: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(**cli)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def valid(**cli: Any) -> Settings:
    """Settings from `cli` over a minimal valid configuration (key set by `keyed`)."""
    return load_settings(**{"targets": ["7/11"], **cli})


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 45s ", 45.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts_seconds_and_prometheus_durations(
    text: str | float, seconds: float
) -> None:
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("1h30m", 5400.0), (45, 45.0)])
def test_durations_apply_to_settings(keyed: None, text: str | float, seconds: float) -> None:
    settings = valid(interval=text, timeout=text, stale_after=text)
    assert (settings.interval, settings.timeout, settings.stale_after) == (seconds,) * 3


@pytest.mark.parametrize("text", ["abc", "5x", "", "   ", "1.5h", "m5", "5 m"])
def test_parse_duration_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["abc", "5x", ""])
def test_bad_duration_is_a_problem_naming_option_and_value(keyed: None, text: str) -> None:
    assert problems(targets=["7/11"], interval=text) == [
        f"interval: not a duration: use seconds or a Prometheus duration like 30s, 5m, 1h "
        f"(got {text!r})"
    ]


@pytest.mark.parametrize("value", ["-5", "0", "0s", 0, -1.5, "nan", "inf"])
def test_duration_must_be_positive_and_finite(keyed: None, value: str | float) -> None:
    (line,) = problems(targets=["7/11"], interval=value)
    assert line.startswith("interval: ")
    assert f"(got {value!r})" in line


def test_boolean_is_not_a_duration(keyed: None, tmp_path: Path) -> None:
    # `interval: yes` in YAML is True, which must not become a 1 s poll interval
    config = tmp_path / "config.yaml"
    config.write_text("targets: [7/11]\ninterval: yes\n", encoding="utf-8")
    (line,) = problems(config=str(config))
    assert line.startswith("interval: ")


# --- precedence ----------------------------------------------------------------------------------


def test_interval_precedence_flag_over_env_over_yaml_over_default(
    keyed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert valid().interval == 60.0
    config = write_yaml(tmp_path / "config.yaml", {"interval": "2m"})
    assert valid(config=str(config)).interval == 120.0
    monkeypatch.setenv("GCORE_EXPORTER_INTERVAL", "30s")
    assert valid(config=str(config)).interval == 30.0
    assert valid(config=str(config), interval="10s").interval == 10.0


def test_targets_precedence_flag_over_env_over_yaml(
    keyed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"targets": ["1/1"]})
    assert load_settings(config=str(config)).targets == ("1/1",)
    monkeypatch.setenv("GCORE_EXPORTER_TARGETS", "2/2")
    assert load_settings(config=str(config)).targets == ("2/2",)
    assert load_settings(config=str(config), targets=["3/3"]).targets == ("3/3",)


def test_config_file_can_come_from_environment(
    keyed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = write_yaml(tmp_path / "env.yaml", {"targets": ["1/1"], "interval": "5m"})
    from_flag = write_yaml(tmp_path / "flag.yaml", {"targets": ["2/2"], "interval": "7m"})
    monkeypatch.setenv("GCORE_EXPORTER_CONFIG", str(from_env))
    settings = load_settings()
    assert (settings.targets, settings.interval) == (("1/1",), 300.0)
    settings = load_settings(config=str(from_flag))
    assert (settings.targets, settings.interval) == (("2/2",), 420.0)


def test_unset_flags_do_not_override(keyed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCORE_EXPORTER_INTERVAL", "30s")
    assert valid(interval=None).interval == 30.0


def test_empty_yaml_file_means_defaults(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("", encoding="utf-8")
    assert valid(config=str(config)).interval == 60.0


# --- targets -------------------------------------------------------------------------------------


def test_env_targets_are_comma_separated_with_spaces(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_EXPORTER_TARGETS", f" 7/11 , 7/12/{IMG} ,, 8/9/ ")
    assert load_settings().targets == ("7/11", f"7/12/{IMG}", "8/9/")


def test_target_forms_resolve_to_images_and_scopes(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_CLOUD_PROJECT_ID", "5")
    monkeypatch.setenv("GCORE_CLOUD_REGION_ID", "6")
    settings = load_settings(targets=[f"7/11/{IMG}", "8/12", IMG2])
    resolved = settings.resolved_targets()
    assert resolved.images == (ImageKey(Scope(7, 11), IMG), ImageKey(Scope(5, 6), IMG2))
    assert resolved.scopes == (Scope(8, 12),)


def test_bare_image_id_without_project_and_region_is_a_problem_naming_it(keyed: None) -> None:
    (line,) = problems(targets=["7/11", IMG2])
    assert IMG2 in line
    assert "GCORE_CLOUD_PROJECT_ID" in line
    assert "GCORE_CLOUD_REGION_ID" in line


def test_bare_image_id_with_only_a_project_is_a_problem(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_CLOUD_PROJECT_ID", "5")
    (line,) = problems(targets=[IMG2])
    assert IMG2 in line


@pytest.mark.parametrize("spec", ["7/x/img", "7/11/img/extra", "/7/11", "7//img", "-bad"])
def test_malformed_target_is_a_problem_naming_it(keyed: None, spec: str) -> None:
    (line,) = problems(targets=["7/11", spec])
    assert line.startswith("targets.1: not a target")
    assert f"(got {spec!r})" in line


def test_images_inside_a_discovered_scope_are_dropped_and_duplicates_removed(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_CLOUD_PROJECT_ID", "7")
    monkeypatch.setenv("GCORE_CLOUD_REGION_ID", "11")
    settings = load_settings(
        targets=[
            f"7/11/{IMG}",  # covered by 7/11 below
            IMG2,  # bare: 7/11 too, covered
            f"8/12/{IMG}",
            f"8/12/{IMG}",  # duplicate
            "7/11",
            "7/11/",  # same scope again
            "9/13",
        ]
    )
    resolved = settings.resolved_targets()
    assert resolved.images == (ImageKey(Scope(8, 12), IMG),)
    assert resolved.scopes == (Scope(7, 11), Scope(9, 13))


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("7/11", Scope(7, 11)),
        ("7/11/", Scope(7, 11)),
        (f"7/11/{IMG}", ImageKey(Scope(7, 11), IMG)),
        (IMG, BareImage(IMG)),
        ("*", Wildcard(None, None)),
        ("7/*", Wildcard(7, None)),
        ("*/11", Wildcard(None, 11)),
        ("7/*/", Wildcard(7, None)),
        ("baremetal:7/11", Scope(7, 11, "baremetal")),
        (f"baremetal:7/11/{IMG}", ImageKey(Scope(7, 11, "baremetal"), IMG)),
        (f"baremetal:{IMG}", BareImage(IMG, "baremetal")),
        ("baremetal:*", Wildcard(None, None, "baremetal")),
        ("baremetal:7/*", Wildcard(7, None, "baremetal")),
        ("baremetal:*/11", Wildcard(None, 11, "baremetal")),
        (" * ", Wildcard(None, None)),
    ],
)
def test_target_grammar(spec: str, parsed: object) -> None:
    assert parse_target(spec) == parsed


@pytest.mark.parametrize(
    "spec",
    [
        "*/*",
        "**",
        "7/*/img",
        "*/11/img",
        "*/*/img",
        "*7/11",
        "baremetal:",
        "baremetal:baremetal:7/11",
        "virtual:7/11",
        "Baremetal:7/11",
        "baremetal/7/11",
        "baremetal: 7/11",
    ],
)
def test_malformed_wildcard_or_prefix_is_a_problem_naming_it(keyed: None, spec: str) -> None:
    (line,) = problems(targets=["*", spec])
    assert line.startswith("targets.1: not a target: write PROJECT/REGION/IMAGE_ID")
    assert "PROJECT/*" in line
    assert "baremetal:" in line
    assert f"(got {spec!r})" in line


def test_wildcards_resolve_deduplicated_and_leave_every_explicit_image_to_discovery(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_CLOUD_PROJECT_ID", "7")
    monkeypatch.setenv("GCORE_CLOUD_REGION_ID", "11")
    settings = load_settings(
        targets=["*", "7/*", "*/11", "*", "baremetal:*", f"7/11/{IMG}", f"baremetal:{IMG2}"]
    )
    resolved = settings.resolved_targets()
    assert resolved.wildcards == (
        Wildcard(None, None),
        Wildcard(7, None),
        Wildcard(None, 11),
        Wildcard(None, None, "baremetal"),
    )
    assert resolved.scopes == ()
    assert resolved.images == (
        ImageKey(Scope(7, 11), IMG),
        ImageKey(Scope(7, 11, "baremetal"), IMG2),
    )


def test_star_needs_no_default_project_or_region(keyed: None) -> None:
    assert valid(targets=["*"]).resolved_targets().wildcards == (Wildcard(None, None),)


def test_bare_baremetal_image_without_project_and_region_is_a_problem(keyed: None) -> None:
    (line,) = problems(targets=[f"baremetal:{IMG2}"])
    assert f"write baremetal:PROJECT/REGION/{IMG2}" in line


def test_coverage_options_have_defaults(keyed: None) -> None:
    settings = valid(interval="2m")
    assert settings.discovery_interval == 600.0
    assert settings.task_interval is None
    assert settings.effective_task_interval == 120.0
    assert settings.failed_task_window == 86400.0
    assert settings.image_task_pattern == DEFAULT_IMAGE_TASK_PATTERN


def test_coverage_options_from_flags_env_and_yaml(
    keyed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_yaml(
        tmp_path / "config.yaml",
        {
            "targets": ["*"],
            "discovery_interval": "30m",
            "task_interval": "5m",
            "failed_task_window": "2d",
            "image_task_pattern": "^upload_",
        },
    )
    monkeypatch.setenv("GCORE_EXPORTER_TASK_INTERVAL", "3m")
    monkeypatch.setenv("GCORE_EXPORTER_IMAGE_TASK_PATTERN", "(?i)image")
    settings = load_settings(config=str(config), failed_task_window="12h")
    assert settings.discovery_interval == 1800.0
    assert settings.effective_task_interval == 180.0
    assert settings.failed_task_window == 43200.0
    assert settings.image_task_pattern == "(?i)image"


@pytest.mark.parametrize(
    ("option", "bad", "message"),
    [
        ("discovery_interval", "often", "not a duration"),
        ("task_interval", "0", "greater than 0"),
        ("failed_task_window", "-1h", "not a duration"),
        ("image_task_pattern", "upload(", "not a regular expression"),
    ],
)
def test_bad_coverage_option_is_one_line_naming_it(
    keyed: None, option: str, bad: str, message: str
) -> None:
    (line,) = problems(targets=["*"], **{option: bad})
    assert line.startswith(f"{option}: ")
    assert message in line
    assert line.endswith(f"(got {bad!r})")


def test_describe_writes_every_target_form_back(keyed: None) -> None:
    targets = ["*", "baremetal:7/*", "*/11", "baremetal:7/11", f"baremetal:8/12/{IMG}", "9/13"]
    described = valid(targets=targets, task_interval="90s").describe()
    assert described["targets"] == [
        f"baremetal:8/12/{IMG}",
        "baremetal:7/11",
        "9/13",
        "*",
        "baremetal:7/*",
        "*/11",
    ]
    assert described["task_interval"] == 90.0
    assert described["discovery_interval"] == 600.0


def test_no_targets_is_a_problem(keyed: None) -> None:
    (line,) = problems()
    assert "targets" in line


# --- problems reported ---------------------------------------------------------------------------


def test_several_problems_give_one_line_each_naming_option_and_value(keyed: None) -> None:
    lines = problems(
        targets=["7/11"],
        interval="soon",
        concurrency=0,
        listen="nowhere",
        log_level="loud",
    )
    assert len(lines) == 4
    expected = {
        "interval": "'soon'",
        "concurrency": "0",
        "listen": "'nowhere'",
        "log_level": "'loud'",
    }
    for option, shown in expected.items():
        (line,) = [line for line in lines if line.startswith(f"{option}: ")]
        assert line.endswith(f"(got {shown})")
    assert all("\n" not in line for line in lines)


def test_cross_field_problems_are_all_reported() -> None:
    # no API key and no targets: two problems, two lines
    lines = problems()
    assert len(lines) == 2
    assert any("GCORE_API_KEY" in line for line in lines)
    assert any("targets" in line for line in lines)


def test_unknown_yaml_key_is_an_unknown_setting(keyed: None, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"targets": ["7/11"], "intervall": "5m"})
    assert problems(config=str(config)) == ["intervall: unknown setting"]


def test_unknown_flag_is_an_unknown_setting(keyed: None) -> None:
    assert problems(targets=["7/11"], colour="blue") == ["colour: unknown setting"]


def test_yaml_that_is_not_a_mapping_is_one_line(keyed: None, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", ["7/11", "8/12"])
    (line,) = problems(config=str(config))
    assert line.startswith("config: ")
    assert str(config) in line
    assert "mapping" in line


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file_is_one_line(keyed: None, tmp_path: Path, kind: str) -> None:
    config = tmp_path / "missing.yaml" if kind == "missing" else tmp_path
    (line,) = problems(config=str(config))
    assert line.startswith(f"config: {str(config)!r}: cannot read: ")


def test_broken_yaml_is_one_line(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets: [7/11\ninterval: 5m\n", encoding="utf-8")
    (line,) = problems(config=str(config))
    assert line.startswith(f"config: {str(config)!r} is not valid YAML")
    assert "\n" not in line


def test_config_inside_yaml_is_refused(keyed: None, tmp_path: Path) -> None:
    other = write_yaml(tmp_path / "other.yaml", {"targets": ["7/11"]})
    config = write_yaml(tmp_path / "config.yaml", {"config": str(other)})
    (line,) = problems(config=str(config))
    assert line.startswith("config: ")
    assert "`config` cannot be set inside a config file" in line


# --- base URL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://api.gcore.com",
        "http://10.0.0.1:8080",
        "http://localhost.example.com",
        "http://[::2]",
    ],
)
def test_plain_http_base_url_is_refused(
    keyed: None, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("GCORE_BASE_URL", url)
    (line,) = problems(targets=["7/11"])
    assert line.startswith("GCORE_BASE_URL: plain http")
    assert f"(got {url!r})" in line


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("https://api.gcore.com/", "https://api.gcore.com"),
        ("https://eu.example.com:8443", "https://eu.example.com:8443"),
    ],
)
def test_https_or_loopback_http_base_url_is_accepted(
    keyed: None, monkeypatch: pytest.MonkeyPatch, url: str, stored: str
) -> None:
    monkeypatch.setenv("GCORE_BASE_URL", url)
    assert valid().base_url == stored


@pytest.mark.parametrize("url", ["ftp://api.gcore.com", "api.gcore.com", "https://"])
def test_base_url_that_is_not_http_is_refused(
    keyed: None, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("GCORE_BASE_URL", url)
    (line,) = problems(targets=["7/11"])
    assert line.startswith("GCORE_BASE_URL: ")


# --- API key -------------------------------------------------------------------------------------


def test_api_key_is_required() -> None:
    (line,) = problems(targets=["7/11"])
    assert "API key is required" in line
    assert "GCORE_API_KEY" in line


def test_demo_needs_no_api_key_nor_targets() -> None:
    settings = load_settings(demo=True)
    assert settings.demo is True
    assert settings.api_key is None


def test_api_key_from_environment(keyed: None) -> None:
    assert valid().read_api_key().current.get_secret_value() == API_KEY


def test_api_key_and_key_file_together_are_refused(
    keyed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY, encoding="utf-8")
    monkeypatch.setenv("GCORE_API_KEY_FILE", str(key_file))
    (line,) = problems(targets=["7/11"])
    assert "set only one of GCORE_API_KEY and GCORE_API_KEY_FILE" in line
    assert API_KEY not in line


def test_key_file_is_read_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {API_KEY}\n\n", encoding="utf-8")
    monkeypatch.setenv("GCORE_API_KEY_FILE", str(key_file))
    settings = valid()
    assert settings.read_api_key().current.get_secret_value() == API_KEY
    assert settings.describe()["api_key"] == "**********"


@pytest.mark.parametrize("content", [None, "", " \n\t\n"])
def test_missing_or_empty_key_file_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None
) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content, encoding="utf-8")
    monkeypatch.setenv("GCORE_API_KEY_FILE", str(key_file))
    settings = valid()
    with pytest.raises(ConfigError) as info:
        settings.read_api_key()
    (line,) = info.value.problems
    assert line.startswith("GCORE_API_KEY_FILE: ")
    assert str(key_file) in line


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_empty_api_key_in_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GCORE_API_KEY", value)
    with pytest.raises(ConfigError) as info:
        valid().read_api_key()
    assert any("GCORE_API_KEY" in line for line in info.value.problems)


def test_api_key_from_environment_is_stripped_like_the_key_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a Kubernetes secret made with `--from-file` usually ends in a newline, which aiohttp
    # refuses in a header with a ValueError that is no FetchError
    monkeypatch.setenv("GCORE_API_KEY", f"{API_KEY}\n")
    assert valid().read_api_key().current.get_secret_value() == API_KEY


def test_api_key_never_appears_in_repr_str_or_describe(keyed: None) -> None:
    settings = valid()
    assert settings.read_api_key().current.get_secret_value() == API_KEY  # it is really set
    for text in (repr(settings), str(settings), repr(settings.describe())):
        assert API_KEY not in text
    assert settings.describe()["api_key"] == "**********"


def test_api_key_never_appears_in_problems_about_other_options(keyed: None) -> None:
    lines = problems(targets=["7/11", "7/x"], interval="soon", listen="nowhere")
    assert len(lines) == 3
    assert all(API_KEY not in line for line in lines)


def test_api_key_never_appears_in_problems_about_the_key_itself(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"targets": ["7/11"], "GCORE_API_KEY": [API_KEY]})
    (line,) = problems(config=str(config))
    assert line.endswith("GCORE_API_KEY belongs in the environment, not a config file")
    assert API_KEY not in line
    (line,) = problems(targets=["7/11"], GCORE_API_KEY={"key": API_KEY})
    assert line.startswith("GCORE_API_KEY: ")
    assert API_KEY not in line


def test_secrets_and_endpoint_are_refused_in_a_config_file(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "config.yaml",
        {"targets": ["7/11"], "api_key": API_KEY, "GCORE_BASE_URL": "https://x.example"},
    )
    lines = problems(config=str(config))
    assert [line.rsplit(": ", 1)[1] for line in lines] == [
        "GCORE_BASE_URL belongs in the environment, not a config file",
        "api_key belongs in the environment, not a config file",
    ]
    assert all(API_KEY not in line for line in lines)


def test_api_key_never_appears_in_a_broken_yaml_problem(tmp_path: Path) -> None:
    # the YAML source accepts GCORE_API_KEY; a syntax error near it must not echo the line
    config = tmp_path / "config.yaml"
    config.write_text(f'targets: [7/11]\nGCORE_API_KEY: "{API_KEY}\n', encoding="utf-8")
    (line,) = problems(config=str(config))
    assert "is not valid YAML" in line
    assert API_KEY not in line


# --- listen, stale_after, concurrency, log level -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":10150", (None, 10150)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("exporter.local:8080", ("exporter.local", 8080)),
    ],
)
def test_listen_address_parses(text: str, address: tuple[str | None, int]) -> None:
    assert listen_address(text) == address


@pytest.mark.parametrize("text", ["host", "host:99999", "host:", ":-1", "host:http", "", "[::1]"])
def test_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        listen_address(text)


def test_bad_listen_is_a_problem_naming_it(keyed: None) -> None:
    (line,) = problems(targets=["7/11"], listen="host:99999")
    assert line.startswith("listen: ")
    assert "(got 'host:99999')" in line


def test_stale_after_defaults_to_five_intervals(keyed: None) -> None:
    assert valid().effective_stale_after == 300.0
    assert valid(interval="30s").effective_stale_after == 150.0
    assert valid(interval="30s").describe()["stale_after"] == 150.0
    assert valid(interval="30s", stale_after="1m").effective_stale_after == 60.0


def test_timeout_defaults_to_ten_seconds_or_the_interval_if_shorter(keyed: None) -> None:
    assert valid().effective_timeout == 10.0
    assert valid(interval="5s").effective_timeout == 5.0
    assert valid(interval="5s").describe()["timeout"] == 5.0
    assert valid(interval="5s", timeout="5s").effective_timeout == 5.0
    assert valid(interval="1m", timeout="30s").effective_timeout == 30.0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"interval": "30s", "timeout": "1m"},
            [
                "timeout (60s) is longer than interval (30s): a request could outlast its poll"
                " round; shorten it or leave it unset"
            ],
        ),
        (
            {"interval": "1m", "stale_after": "30s"},
            [
                "stale_after (30s) is shorter than interval (60s): values would be withdrawn at the"
                " first failed fetch"
            ],
        ),
        (
            {"interval": "1m", "timeout": "90s", "stale_after": "59s", "demo": True},
            [
                "timeout (90s) is longer than interval (60s): a request could outlast its poll"
                " round; shorten it or leave it unset",
                "stale_after (59s) is shorter than interval (60s): values would be withdrawn at the"
                " first failed fetch",
            ],
        ),
    ],
)
def test_contradicting_durations_are_refused(
    keyed: None, options: dict[str, Any], expected: list[str]
) -> None:
    assert problems(targets=["7/11"], **options) == expected


def test_contradiction_across_sources_is_refused(
    keyed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The interval from a flag, the timeout from the environment, stale_after from YAML."""
    config = write_yaml(tmp_path / "config.yaml", {"targets": ["7/11"], "stale_after": "2m"})
    monkeypatch.setenv("GCORE_EXPORTER_TIMEOUT", "2m")
    lines = problems(config=str(config), interval="5m")
    assert [line.split(" (")[0] for line in lines] == ["stale_after"]
    lines = problems(config=str(config), interval="90s")
    assert [line.split(" (")[0] for line in lines] == ["timeout"]


@pytest.mark.parametrize("value", [1, 256, "8"])
def test_concurrency_within_bounds_is_accepted(keyed: None, value: int | str) -> None:
    assert valid(concurrency=value).concurrency == int(value)


@pytest.mark.parametrize("value", [0, 257, -1, 2.5, "many"])
def test_concurrency_out_of_bounds_is_refused(keyed: None, value: Any) -> None:
    (line,) = problems(targets=["7/11"], concurrency=value)
    assert line.startswith("concurrency: ")
    assert f"(got {value!r})" in line


@pytest.mark.parametrize("value", ["DEBUG", "Warn", "error", "Info"])
def test_log_level_is_case_insensitive(keyed: None, value: str) -> None:
    assert valid(log_level=value).log_level == value.lower()


@pytest.mark.parametrize("value", ["warning", "WARNING", "warn"])
def test_log_level_warning_is_promslogs_warn(keyed: None, value: str) -> None:
    assert valid(log_level=value).log_level == "warn"


def test_several_listen_addresses_from_the_environment(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_EXPORTER_LISTEN", "127.0.0.1:1, [::1]:2")
    assert valid().listen == ("127.0.0.1:1", "[::1]:2")


@pytest.mark.parametrize("path", ["metrics", "/", "/healthz", "/readyz", "/a b", "/a?b", ""])
def test_a_telemetry_path_that_is_no_path_of_its_own_is_refused(keyed: None, path: str) -> None:
    (line,) = problems(targets=["7/11"], telemetry_path=path)
    assert line.startswith("telemetry_path: not a path of its own")


def test_log_level_from_environment_is_case_insensitive(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_EXPORTER_LOG_LEVEL", "ERROR")
    assert valid().log_level == "error"


def test_unknown_log_level_is_refused(keyed: None) -> None:
    (line,) = problems(targets=["7/11"], log_level="verbose")
    assert line.startswith("log_level: ")
    assert "(got 'verbose')" in line


# --- hostile files -------------------------------------------------------------------------------


def test_a_config_file_over_the_size_cap_is_one_line(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), encoding="utf-8")
    assert problems(config=str(config)) == [
        f"config: {str(config)!r}: larger than {MAX_CONFIG_BYTES} bytes"
    ]
    (line,) = problems(config="/dev/zero")
    assert line.endswith(f"larger than {MAX_CONFIG_BYTES} bytes")


def test_aliases_within_the_bound_are_expanded(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets: [&s 7/11, *s, 7/12]\n", encoding="utf-8")
    assert load_settings(config=str(config)).targets == ("7/11", "7/11", "7/12")


def test_aliases_expanding_past_the_bound_are_refused(keyed: None, tmp_path: Path) -> None:
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    levels += [
        f"{n}: &{n} [{','.join([f'*{p}'] * 10)}]" for p, n in zip("abcd", "bcde", strict=True)
    ]
    config = tmp_path / "config.yaml"
    config.write_text("\n".join(levels) + "\n", encoding="utf-8")  # 10^5 strings and the lists
    assert problems(config=str(config)) == [
        f"config: {str(config)!r}: more than {MAX_CONFIG_VALUES} values once YAML aliases are "
        "expanded"
    ]


def test_a_recursive_alias_is_refused(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets: &t [7/11, *t]\n", encoding="utf-8")
    (line,) = problems(config=str(config))
    assert line.endswith("values once YAML aliases are expanded")


def test_deep_nesting_is_one_line(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert problems(config=str(config)) == [
        f"config: {str(config)!r}: nested more than {MAX_CONFIG_DEPTH} levels deep"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("interval: " + "9" * 5000, "Exceeds the limit (4300 digits)"),
        ("interval: 2026-13-01", "month must be in 1..12"),
    ],
)
def test_a_scalar_yaml_cannot_build_is_one_line(
    keyed: None, tmp_path: Path, text: str, problem: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text + "\n", encoding="utf-8")
    (line,) = problems(config=str(config))
    assert line.startswith(f"config: {str(config)!r} holds a value that cannot be read: ")
    assert problem in line
    assert len(line) < 250


@pytest.mark.parametrize(
    "bad",
    [
        ["x" * 1000] * 50,
        {f"k{n}": list(range(100)) for n in range(100)},
        [[["x" * 50] * 5] * 5] * 5,
        "y" * 100_000,
    ],
)
def test_a_shown_value_is_truncated(keyed: None, tmp_path: Path, bad: Any) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"targets": ["7/11"], "interval": bad})
    (line,) = problems(config=str(config))
    assert line.startswith("interval: ")
    assert len(line) < 250


def test_a_huge_unknown_key_is_truncated(keyed: None, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "config.yaml", {"targets": ["7/11"], "k" * 10_000: 1})
    (line,) = problems(config=str(config))
    assert line.endswith("...: unknown setting")
    assert len(line) < 150
