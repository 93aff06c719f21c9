"""`make bench` in miniature: its table and JSON have every column, with figures that make sense."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tooling import ROOT

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


async def test_a_tiny_bench_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.table",
        *("--images", "20", "--ids", "10", "--seconds", "0.05", "--interval", "0.25"),
        *("--json", str(results)),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    header, rule, *lines = out.decode().splitlines()[:6]
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
    assert discovered["api_calls_per_round"] in (1, 2)  # a page; a lock's task, unless cached
    assert explicit["api_calls_per_round"] == 10  # one GET per id
    for row in rows.values():
        assert set(row["scrapes"]) == set(VARIANTS)
        assert all(v["count"] >= 1 and v["median_ms"] > 0 for v in row["scrapes"].values())
        assert 0 < row["gzip_bytes"] < row["text_bytes"]
        assert 20 < row["peak_rss_mib"] < 500
    for row in (discovered, explicit):
        assert row["round_seconds"] > 0 and row["poll_p99_ms"] > 0
