"""A short soak of the real daemon (bench/soak.py): nothing piles up, no scrape has a duplicate."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from support.tooling import ROOT

pytestmark = pytest.mark.slow  # a few seconds of churn against the real daemon

FD_SLACK = 6
"""Open descriptors may differ by this much between warm-up and end (pooled connections)."""
TASK_SLACK = 10
"""Live tasks may differ by this much (fetches, held answers and connections in flight)."""


async def test_a_short_soak_leaks_no_descriptors_nor_tasks_and_never_duplicates_a_series() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.soak",
        "--seconds",
        "3",
        "--images",
        "60",
        "--json",
        cwd=ROOT,
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["exit_code"] == 0
    assert report["stray_lines"] == []  # no traceback, nothing but JSON log lines
    assert report["unexpected_errors"] == 0
    assert report["duplicate_series"] == 0, report["duplicate_examples"]
    assert report["unparsable_scrapes"] == 0
    assert set(report["scrapes"]) == {"text", "openmetrics", "gzip"}
    assert report["reloads_applied"] >= 1
    assert report["reloads_refused"] >= 1
    assert report["key_rotations"] >= 1
    assert report["fds_end"] <= report["fds_warm"] + FD_SLACK, report
    assert report["tasks_end"] <= report["tasks_warm"] + TASK_SLACK, report
