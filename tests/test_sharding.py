"""Sharding: the hash (reproducible, balanced, consistent), and how a process learns its shard."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config.settings import ConfigError, load_settings
from exporter.sharding import Shard, image_hash, jump_hash, ordinal_from_pod_name, shard_of

API_KEY = "sekrit-5b1c-API-KEY"
ROOT = str(Path(__file__).resolve().parent.parent)
IDS = [f"5aad0000-0000-4000-8000-{n:012d}" for n in range(3000)]


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)


def problems(**cli: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(**{"targets": ["7/11"], **cli})
    return info.value.problems


# --- the hash -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "buckets", "bucket"),
    # The reference values other implementations check (ClickHouse's jumpConsistentHash tests).
    [
        (1, 1, 0),
        (42, 57, 43),
        (256, 1024, 520),
        (3735883980, 1, 0),
        (3735883980, 666, 361),
        (16045690984833335023, 255, 237),
    ],
)
def test_jump_hash_matches_the_reference_implementation(
    key: int, buckets: int, bucket: int
) -> None:
    assert jump_hash(key, buckets) == bucket


def test_image_hash_is_the_first_8_bytes_of_sha256_big_endian() -> None:
    digest = hashlib.sha256(IDS[0].encode()).digest()
    assert image_hash(IDS[0]) == int.from_bytes(digest[:8], "big")
    # `printf %s f0e1d2c3-aaaa-4bbb-8ccc-0123456789ab | sha256sum` begins 8347f35583615f70
    assert image_hash("f0e1d2c3-aaaa-4bbb-8ccc-0123456789ab") == 0x8347F35583615F70


def test_the_readme_example_holds() -> None:
    assert [shard_of("f0e1d2c3-aaaa-4bbb-8ccc-0123456789ab", n) for n in (1, 2, 3, 6)] == [
        0,
        1,
        1,
        5,
    ]


def test_one_shard_owns_everything() -> None:
    assert all(Shard().owns(image_id) for image_id in IDS)
    assert {shard_of(image_id, 1) for image_id in IDS} == {0}


def test_three_shards_hold_every_image_exactly_once_and_about_a_third_each() -> None:
    shards = [Shard(n, 3) for n in range(3)]
    owners = [[s.ordinal for s in shards if s.owns(image_id)] for image_id in IDS]
    assert all(len(owner) == 1 for owner in owners)
    sizes = Counter(owner[0] for owner in owners)
    assert all(900 <= sizes[n] <= 1100 for n in range(3)), sizes


def test_a_fourth_shard_takes_about_a_quarter_from_the_others_and_loses_none() -> None:
    before = {image_id: shard_of(image_id, 3) for image_id in IDS}
    after = {image_id: shard_of(image_id, 4) for image_id in IDS}
    moved = [image_id for image_id in IDS if before[image_id] != after[image_id]]
    assert all(after[image_id] == 3 for image_id in moved)  # only onto the new shard
    assert 600 <= len(moved) <= 900, len(moved)  # about 3000 / 4
    assert set(after.values()) == {0, 1, 2, 3}


def test_shard_must_lie_below_the_total() -> None:
    with pytest.raises(ValueError, match=r"not in 0\.\.2"):
        Shard(3, 3)


@pytest.mark.parametrize(
    ("name", "ordinal"),
    [("gcore-exporter-0", 0), ("gcore-exporter-12", 12), ("a-b-c-3", 3), ("x-007", 7)],
)
def test_ordinal_is_the_number_after_the_last_dash(name: str, ordinal: int) -> None:
    assert ordinal_from_pod_name(name) == ordinal


@pytest.mark.parametrize("name", ["gcore-exporter", "gcore-exporter-7f9c4", "exporter-2-", "3", ""])
def test_pod_name_without_an_ordinal_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="-ORDINAL"):
        ordinal_from_pod_name(name)


# --- settings -------------------------------------------------------------------------------------


def test_not_sharded_by_default(keyed: None) -> None:
    settings = load_settings(targets=["7/11"])
    assert settings.shard_assignment() == Shard(0, 1)


def test_shard_from_flags_environment_and_yaml(
    keyed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_settings(targets=["7/11"], shard=1, total_shards=3).shard_assignment() == Shard(
        1, 3
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": ["7/11"], "shard": 2, "total_shards": 4}))
    assert load_settings(config=str(config)).shard_assignment() == Shard(2, 4)
    monkeypatch.setenv("GCORE_EXPORTER_SHARD", "3")
    monkeypatch.setenv("GCORE_EXPORTER_TOTAL_SHARDS", "5")
    assert load_settings(config=str(config)).shard_assignment() == Shard(3, 5)


def test_pod_name_gives_the_shard_when_none_is_set(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "gcore-gpu-image-exporter-2")
    assert load_settings(targets=["7/11"], total_shards=3).shard_assignment() == Shard(2, 3)
    assert load_settings(targets=["7/11"], total_shards=3, shard=0).shard_assignment() == Shard(
        0, 3
    )
    assert load_settings(targets=["7/11"]).shard_assignment() == Shard(0, 1)  # not sharded


def test_pod_name_without_an_ordinal_is_a_config_error(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "gcore-gpu-image-exporter-7d9f8c6b5-x2x4q")
    (problem,) = problems(total_shards=3)
    assert problem.startswith("POD_NAME: 'gcore-gpu-image-exporter-7d9f8c6b5-x2x4q' does not end")


def test_pod_ordinal_beyond_the_total_is_a_config_error(
    keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "exporter-3")
    (problem,) = problems(total_shards=3)
    assert "is shard 3, not below total_shards 3" in problem


def test_several_shards_need_a_shard_or_a_pod_name(keyed: None) -> None:
    (problem,) = problems(total_shards=2)
    assert "total_shards is 2 but no shard is given" in problem


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ({"shard": 3, "total_shards": 3}, "shard: 3 is not below total_shards 3"),
        ({"shard": 1}, "shard: 1 is not below total_shards 1"),
        ({"shard": -1, "total_shards": 3}, "shard: Input should be greater than or equal to 0"),
        ({"total_shards": 0}, "total_shards: Input should be greater than or equal to 1"),
        ({"total_shards": "many"}, "total_shards: Input should be a valid integer"),
    ],
)
def test_shard_out_of_range_is_a_problem_naming_it(
    keyed: None, cli: dict[str, Any], expected: str
) -> None:
    assert any(problem.startswith(expected) for problem in problems(**cli)), problems(**cli)


def test_pod_name_is_refused_in_a_config_file(keyed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": ["7/11"], "POD_NAME": "x-1"}))
    with pytest.raises(ConfigError, match="POD_NAME belongs in the environment"):
        load_settings(config=str(config))


async def test_check_config_shows_the_shard_and_flags_set_it(tmp_path: Path) -> None:
    env = {"GCORE_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--check-config",
        "--target",
        "7/11",
        "--shard",
        "1",
        "--total-shards",
        "4",
        env={**env, "PYTHONPATH": ROOT},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err
    assert b'"shard": 1' in out
    assert b'"total_shards": 4' in out
