"""The scrape-load bench, short: 20 scrapers over TLS and basic auth, a daemon at 1,000 images.

No timing is asserted: only that every scrape succeeded and that the exporter's memory did not grow
by more than a generous allowance per scraper (a body buffered per connection would cost 2.5 MiB
each at this size; TLS itself costs about 1 MiB per busy connection). `make bench` has the full run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scrape_load import MIB, run_load

pytestmark = pytest.mark.slow  # a daemon at 1,000 images and 20 scrapers for 2 seconds

SCRAPERS = 20


async def test_twenty_scrapers_over_tls_and_basic_auth(tmp_path: Path) -> None:
    report = await run_load(1000, SCRAPERS, 2.0, secure=True, workdir=tmp_path)
    assert report.failures == 0
    assert report.scrapes >= SCRAPERS
    assert report.body_bytes > 2 * MIB
    growth = report.rss_max - report.rss_warm
    assert growth < 16 * MIB + SCRAPERS * 2 * MIB, "\n".join(report.lines())
    assert report.fds_max < 64  # one per scraper, plus the process's own
