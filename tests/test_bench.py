"""`make bench` in miniature: its table and JSON have every column, with figures that make sense."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from support.tooling import ROOT

pytestmark = pytest.mark.slow  # runs the benches at a tiny size

VARIANTS = ("textx1", "textx16", "gzipx1", "gzipx16")
COLUMNS = (
    "scenario",
    "server",
    "API calls/round",
    "round s",
    "round CPU s",
    *(f"{variant} p50/p99 ms" for variant in VARIANTS),
    "p99 in polls ms",
    "text MiB",
    "gzip MiB",
    "peak RSS MiB",
)


async def run_bench(*arguments: str) -> str:
    """What `python -m ARGUMENTS` printed; it must exit 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *arguments,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_a_tiny_bench_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    out = await run_bench(
        "bench.table",
        *("--images", "20", "--ids", "10", "--seconds", "0.05", "--interval", "0.25"),
        *("--json", str(results)),
    )
    header, rule, *lines = out.splitlines()[:6]
    assert header == "| " + " | ".join(COLUMNS) + " |"
    assert rule == "|" + "---|" * len(COLUMNS)
    servers = [(line.split(" | ")[0][2:], line.split(" | ")[1]) for line in lines]
    assert servers == [
        ("20 discovered", "exporter"),
        ("20 discovered", "stock"),
        ("20 discovered", "static"),
        ("10 explicit ids", "exporter"),
    ]
    report = json.loads(results.read_text())
    assert report["machine"]["cpus"] >= 1
    rows = {(row["scenario"], row["server"]): row for row in report["rows"]}
    discovered, explicit = rows["20 discovered", "exporter"], rows["10 explicit ids", "exporter"]
    # a page and the failed-tasks listing; a lock's task, unless cached
    assert discovered["api_calls_per_round"] in (2, 3)
    # one GET per id, the failed-tasks listing; a lock's task, unless cached
    assert explicit["api_calls_per_round"] in (11, 12)
    for row in rows.values():
        assert set(row["scrapes"]) == set(VARIANTS)
        assert all(v["count"] >= 1 and v["median_ms"] > 0 for v in row["scrapes"].values())
        assert 0 < row["gzip_bytes"] < row["text_bytes"]
        assert 20 < row["peak_rss_mib"] < 500
    for row in (discovered, explicit):
        assert row["round_seconds"] > 0 and row["poll_p99_ms"] > 0


async def test_the_memory_profile_says_what_the_bytes_are_for() -> None:
    out = await run_bench("bench.memory", "200", "--top", "3")
    assert out.startswith("images 200, text body ")
    purposes = [
        line.split("  ")[-1]
        for line in out.split("alive, by what it is for:\n")[1].split("\n\n")[0].splitlines()
    ]
    assert "exposition bytes (blocks)" in purposes
    assert "per-image state" in purposes
    assert len(out.split("allocated most:\n")[1].strip().splitlines()) == 3


async def test_the_other_benches_run_at_a_tiny_size() -> None:
    lag = await run_bench("bench.loop_lag", "50")
    assert "images:          50 (1 listing ok, 0 failed)" in lag
    assert "next poll:" in lag and "frozen, next:" in lag
    assert "| 20 | " in await run_bench("bench.explicit_ids", "20")
    assert "| 50 | 5 | " in await run_bench("bench.cluster_publication", "50", "--repeat", "1")
    slices = await run_bench("bench.slices", "50", "--rounds", "1")
    assert "50 discovered images, 1 rounds after the first:" in slices
    assert "| slices over | count | CPU ms | mostly |" in slices


async def test_the_sparse_account_bench_prints_calls_per_round_before_and_after() -> None:
    out = await run_bench(
        "bench.sparse_account",
        *("--projects", "2", "--regions", "3", "--with-images", "1"),
        *("--rounds", "10"),
    )
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in out.splitlines()[3:]}
    for listings in (0, 1):  # images, then clusters
        assert float(rows["before"][listings]) == 12.0  # every scope, every round
        assert float(rows["after"][listings]) == 1 + 11 / 10  # the scope with images; the rest


async def test_the_auth_flood_bench_runs_at_a_tiny_size() -> None:
    out = await run_bench("bench.auth_flood", "--requests", "12", "--cost", "4")
    lines = out.splitlines()
    assert lines[0] == "bcrypt cost 4; flood and probes from another process than the server"
    assert lines[1].startswith("12 distinct wrong passwords: answered in ")
    assert lines[5].startswith("12 times one wrong password: answered in ")
    assert "(12 x 401)" in lines[5]  # one check, shared by all twelve
    for line in lines[2:4] + lines[6:8]:
        assert " requests, p50 " in line
        assert " ms, p99 " in line
    assert lines[4].startswith("  a first login:        answered ")


async def test_the_churn_soak_runs_briefly_and_reports_rss_at_30_s_and_at_the_end() -> None:
    out = await run_bench("bench.soak", "--churn", "--seconds", "3", "--images", "60", "--json")
    report = json.loads(out)
    assert report["exit_code"] == 0 and report["stray_lines"] == []
    assert report["unexpected_errors"] == 0
    assert report["rounds"] >= 1 and report["scrapes"] >= 2
    churn = report["churn"]
    assert churn["status"] == 2 * churn["replaced"] == 2 * churn["lock"] > 0
    assert 0 < report["rss_mib_30s"] <= report["rss_mib_peak"]
    assert report["images_end"] == 60
    assert report["full_collections"] >= 1  # the daemon's freeze: its first round thaws
