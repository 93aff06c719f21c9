"""The whole exporter, in process, polling the fake Gcore API over loopback HTTP."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from platform import python_version
from typing import get_args

import aiohttp
import pytest
from support.clock import NOW
from support.exporter import ExporterFactory, no_backoff
from support.exposition import parse_samples, series, value
from support.tooling import require_tool
from support.waiting import wait_until

from exporter import __version__
from exporter.daemon.wiring import retry_policy
from exporter.demo.fake_gcore import FakeGcore, make_image, make_task
from exporter.gcore.client import GcoreClient, Page
from exporter.gcore.transport import RetryPolicy
from exporter.vocabulary import Endpoint, Reason, Scope

P, R = 7, 11
IMG = "a1b2c3d4-0000-4000-8000-000000000001"


def image_id(n: int) -> str:
    return f"a1b2c3d4-0000-4000-8000-{n:012d}"


def seed(fake: FakeGcore, count: int) -> None:
    """Images `image_id(0)` … `image_id(count - 1)`, named `img-N`, in project P, region R."""
    for n in range(count):
        fake.put_image(P, R, make_image(image_id(n), f"img-{n}"))


def labels(image: str = IMG, project: int = P, region: int = R) -> dict[str, str]:
    return {"project_id": str(project), "region_id": str(region), "image_id": image}


def ago(**delta: float) -> str:
    """A Gcore timestamp `delta` before the exporters' frozen clock."""
    moment = datetime.fromtimestamp(NOW, UTC) - timedelta(**delta)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


async def test_explicit_image_exposes_every_metric(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(
        P,
        R,
        make_image(
            IMG,
            "gpu-base",
            size=1024,
            min_disk=20,
            min_ram=2048,
            created_at=ago(hours=2),
            tags=[{"key": "team", "value": "ml", "read_only": True}],
        ),
    )
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    ls = labels()
    assert value(s, "gcore_gpu_image_info", **ls, name="gpu-base", gpu_driver="nvidia") == 1
    assert value(s, "gcore_gpu_image_status", **ls, status="active") == 1
    assert value(s, "gcore_gpu_image_status", **ls, status="queued") == 0
    assert value(s, "gcore_gpu_image_size_bytes", **ls) == 1024
    assert value(s, "gcore_gpu_image_min_disk_bytes", **ls) == 20 * 2**30
    assert value(s, "gcore_gpu_image_min_ram_bytes", **ls) == 2048 * 2**20
    assert value(s, "gcore_gpu_image_locked", **ls) == 0
    assert value(s, "gcore_gpu_image_lock_age_seconds", **ls) is None
    assert value(s, "gcore_gpu_image_task_info", **ls) is None
    age = value(s, "gcore_gpu_image_age_seconds", **ls)
    assert age == 7200
    assert value(s, "gcore_gpu_image_tag_info", **ls, key="team", value="ml", read_only="true") == 1
    assert value(s, "gcore_gpu_image_up", **ls) == 1
    last = value(s, "gcore_gpu_image_last_success_timestamp_seconds", **ls)
    assert last == NOW
    assert value(s, "gcore_exporter_images") == 1
    assert value(s, "gcore_exporter_api_requests_total", endpoint="image", code="200") == 1


async def test_discovery_pages_through_the_list_without_per_image_requests(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.max_page = 3
    seed(fake, 10)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        s = await running.samples()
    assert len(series(s, "gcore_gpu_image_up")) == 10
    assert fake.count(r"/images\?") == 4  # offsets 0, 3, 6, 9
    assert fake.count(r"/images/") == 0
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R)) == 1
    scope = {"project_id": str(P), "region_id": str(R)}
    assert value(s, "gcore_exporter_discovery_last_success_timestamp_seconds", **scope) == NOW


async def test_own_metrics_are_complete_from_the_first_scrape(
    fake: FakeGcore, exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Build info names the revision and Python; counters of every endpoint and reason start at
    0 (so rate() and increase() see their first event); the process collector is registered."""
    monkeypatch.setenv("GCORE_EXPORTER_REVISION", "0123abc")
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    build = {"version": __version__, "revision": "0123abc"}
    assert value(s, "gcore_exporter_build_info", **build, python_version=python_version()) == 1
    for endpoint in get_args(Endpoint):
        assert value(s, "gcore_exporter_api_retries_total", endpoint=endpoint) == 0
    for reason in get_args(Reason):
        assert value(s, "gcore_exporter_task_fetch_errors_total", reason=reason) == 0
    assert (value(s, "process_resident_memory_bytes") or 0) > 0
    assert value(s, "process_start_time_seconds") is not None


async def test_build_info_says_unknown_without_a_revision(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_exporter_build_info", revision="unknown") == 1


async def test_discovered_image_leaves_and_joins_at_the_next_poll(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    seed(fake, 3)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        fake.remove_image(P, R, image_id(1))
        fake.put_image(P, R, make_image(image_id(3), "newcomer"))
        await running.round()
        s = await running.samples()
    present = {ls["image_id"] for ls in series(s, "gcore_gpu_image_up")}
    assert present == {image_id(0), image_id(2), image_id(3)}
    assert series(s, "gcore_gpu_image_status", image_id=image_id(1)) == []
    assert value(s, "gcore_gpu_image_info", image_id=image_id(3), name="newcomer") == 1


async def test_list_that_changes_while_paged_is_read_again_and_loses_nothing(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.max_page = 2
    seed(fake, 4)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        # In the next two listings the list moves under the pages: the second page says five
        # images now and lacks image 2, as if it had shifted onto the page already read.
        moved = {"count": 5, "results": [make_image(image_id(3), "img-3")]}
        fake.inject(r"/images\?limit=1000&offset=2", 200, body=moved, times=2)
        await running.round()
        s = await running.samples()
    assert fake.count(r"/images\?limit=1000&offset=0") == 3  # first round, then twice
    assert len(series(s, "gcore_gpu_image_up")) == 4
    assert all(
        v == 1 for v in [value(s, "gcore_gpu_image_up", image_id=image_id(n)) for n in range(4)]
    )


async def test_listing_that_fails_midway_keeps_what_came_and_fails_the_rest(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.max_page = 2
    seed(fake, 4)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        for n in range(4):
            fake.update_image(P, R, image_id(n), name=f"renamed-{n}")
        fake.inject(r"offset=2", 403, times=None)
        result = await running.round()
        s = await running.samples()
    assert (result.ok, result.failed) == (0, 1)
    assert [value(s, "gcore_gpu_image_up", image_id=image_id(n)) for n in range(4)] == [1, 1, 0, 0]
    assert value(s, "gcore_gpu_image_info", image_id=image_id(1), name="renamed-1") == 1
    assert value(s, "gcore_gpu_image_info", image_id=image_id(2), name="img-2") == 1  # kept
    assert value(s, "gcore_exporter_discovery_up", endpoint="images") == 0


async def test_nameless_broken_item_does_not_make_the_list_look_unstable(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(image_id(1), "good"))
    fake.put_image(P, R, {"id": None, "name": "no id"})
    async with exporter(targets=[f"{P}/{R}"]) as running:
        fake.remove_image(P, R, image_id(1))
        fake.put_image(P, R, make_image(image_id(2), "next"))
        await running.round()
        s = await running.samples()
    assert fake.count(r"/images\?") == 2  # one listing per round, none read twice
    assert [ls["image_id"] for ls in series(s, "gcore_gpu_image_up")] == [image_id(2)]


async def test_not_found_withdraws_values_at_once_but_keeps_up(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "doomed"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"], stale_after="1h") as running:
        fake.remove_image(P, R, IMG)
        await running.round()
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", **labels()) == 0
    assert value(s, "gcore_gpu_image_info", **labels()) is None
    assert series(s, "gcore_gpu_image_status") == []
    assert value(s, "gcore_gpu_image_fetch_errors_total", **labels(), reason="not_found") == 1
    assert value(s, "gcore_gpu_image_last_error_info", **labels(), reason="not_found") == 1


async def test_configured_image_has_up_even_when_it_never_answered(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.inject("/images/", 503, body="<html>down</html>", content_type="text/html", times=None)
    async with exporter(targets=[f"{P}/{R}/{IMG}"], timeout="1s") as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", **labels()) == 0
    assert value(s, "gcore_gpu_image_fetch_errors_total", **labels(), reason="server_error") == 1
    assert fake.count("/images/") == 3  # retried twice


async def test_the_daemon_backs_off_between_retries_unless_told_not_to(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    """Tests run the exporter without back-off but with the daemon's attempts; the daemon's own
    policy waits (at least half of `backoff_base`, then of twice that) before each retry."""
    fake.put_image(P, R, make_image(IMG, "x"))
    gaps: dict[str, list[float]] = {}
    for name, retry in [("daemon", retry_policy), ("tests", no_backoff)]:
        async with exporter(targets=[f"{P}/{R}/{IMG}"], retry=retry) as running:
            fake.inject("/images/", 503, times=2)
            start = len(fake.request_times)
            await running.round()
            # the image's requests only: the poll of the Tasks list at start may land meanwhile
            sent = zip(fake.requests[start:], fake.request_times[start:], strict=True)
            times = [when for path, when in sent if "/images/" in path]
        assert len(times) == 3, name
        gaps[name] = [later - earlier for earlier, later in itertools.pairwise(times)]
    base = RetryPolicy().backoff_base  # the transport's, which the daemon keeps
    assert gaps["daemon"][0] >= base / 2 and gaps["daemon"][1] >= base


async def test_slow_answer_is_a_timeout(fake: FakeGcore, exporter: ExporterFactory) -> None:
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"], timeout="200ms") as running:
        fake.inject("/images/", 200, delay=1, times=None, body=make_image(IMG, "x"))
        await running.round()
        s = await running.samples()
    assert value(s, "gcore_gpu_image_fetch_errors_total", **labels(), reason="timeout") == 1
    assert value(s, "gcore_gpu_image_info", **labels(), name="x") == 1  # kept until stale
    assert value(s, "gcore_exporter_api_requests_total", endpoint="image", code="timeout") == 3


async def test_unreachable_api_is_a_connection_error(
    exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("GCORE_BASE_URL", f"http://127.0.0.1:{port}")
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_last_error_info", **labels(), reason="connection") == 1
    assert value(s, "gcore_exporter_api_requests_total", endpoint="image", code="connection") == 3


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, "unauthorized"), (403, "forbidden"), (404, "not_found"), (400, "invalid_response")],
)
async def test_client_errors_are_counted_by_reason_and_not_retried(
    fake: FakeGcore, exporter: ExporterFactory, status: int, reason: str
) -> None:
    fake.inject("/images/", status, times=None)
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_fetch_errors_total", **labels(), reason=reason) == 1
    assert fake.count("/images/") == 1


async def test_bad_key_is_unauthorized(fake: FakeGcore, exporter: ExporterFactory) -> None:
    fake.api_key = "another-key"
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}", f"{P}/{R + 1}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_last_error_info", **labels(), reason="unauthorized") == 1
    assert value(s, "gcore_exporter_api_requests_total", endpoint="images", code="401") == 1
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R + 1)) == 0
    assert series(s, "gcore_exporter_discovery_last_success_timestamp_seconds") == []


async def test_invalid_image_body_is_invalid_response(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.inject("/images/", 200, body={"id": IMG, "name": "no status"}, times=None)
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    assert (
        value(s, "gcore_gpu_image_fetch_errors_total", **labels(), reason="invalid_response") == 1
    )


async def test_invalid_item_in_a_listing_fails_only_that_image(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(image_id(1), "good"))
    fake.put_image(P, R, {"id": image_id(2), "name": "broken", "status": "active"})
    async with exporter(targets=[f"{P}/{R}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", **labels(image_id(1))) == 1
    assert value(s, "gcore_gpu_image_up", **labels(image_id(2))) == 0
    reason = "invalid_response"
    assert value(s, "gcore_gpu_image_fetch_errors_total", **labels(image_id(2)), reason=reason) == 1


async def test_rate_limit_pauses_every_request_until_retry_after(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    seed(fake, 4)
    targets = [f"{P}/{R}/{image_id(n)}" for n in range(4)]
    async with exporter(targets=targets, concurrency=1) as running:
        fake.inject(f"/images/{image_id(0)}", 429, headers={"Retry-After": "1"})
        start = len(fake.request_times)
        await running.round()
        s = await running.samples()
    times = fake.request_times[start:]
    assert fake.requests[start].endswith(image_id(0))
    assert len(times) == 5  # the 429, its retry, and the three others
    assert all(t - times[0] >= 0.95 for t in times[1:]), "a request went out during the pause"
    assert all(value(s, "gcore_gpu_image_up", **labels(image_id(n))) == 1 for n in range(4))
    assert value(s, "gcore_exporter_rate_limit_pauses_total") == 1


async def test_slow_image_does_not_delay_the_others(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    seed(fake, 3)
    targets = [f"{P}/{R}/{image_id(n)}" for n in range(3)]
    async with exporter(targets=targets) as running:
        release = asyncio.Event()
        slow = make_image(image_id(0), "slow")
        fake.inject(f"/images/{image_id(0)}", 200, hold=release, body=slow)
        for n in (1, 2):
            fake.update_image(P, R, image_id(n), name=f"renamed-{n}")
        slow_round = running.scheduler.start_round()

        async def others_renamed() -> bool:
            s = await running.samples()
            return all(
                value(s, "gcore_gpu_image_info", image_id=image_id(n), name=f"renamed-{n}") == 1
                for n in (1, 2)
            )

        await wait_until(others_renamed, timeout=5, what="the fast images to refresh")
        assert not slow_round.done()
        release.set()
        result = await asyncio.wait_for(slow_round, 10)
    assert (result.ok, result.failed) == (3, 0)


async def test_round_skips_a_target_still_in_flight(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "slow"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        release = asyncio.Event()
        fake.inject("/images/", 200, hold=release, body=make_image(IMG, "slow"))
        first = running.scheduler.start_round()
        second = await asyncio.wait_for(running.scheduler.start_round(), 10)
        assert (second.ok, second.skipped) == (0, 1)
        release.set()
        assert (await asyncio.wait_for(first, 10)).ok == 1
    assert fake.count("/images/") == 2


async def test_locked_image_reports_task_and_lock_age(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    task_id = "7a5c0000-0000-4000-8000-00000000beef"
    fake.put_task(make_task(task_id, "ERROR", "upload_virtual_image", created_on=ago(minutes=10)))
    fake.put_image(P, R, make_image(IMG, "busy", status="saving", task_id=task_id))
    fake.put_image(P, R, make_image(image_id(2), "also busy", task_id=task_id))
    async with exporter(targets=[f"{P}/{R}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_locked", **labels()) == 1
    lock_age = value(s, "gcore_gpu_image_lock_age_seconds", **labels())
    assert lock_age == 600
    task = {"task_id": task_id, "task_type": "upload_virtual_image", "task_state": "ERROR"}
    assert value(s, "gcore_gpu_image_task_info", **labels(), **task) == 1
    assert fake.count("/tasks/") == 1  # one lookup for both images


async def test_task_api_failure_does_not_fail_the_image(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    task_id = "7a5c0000-0000-4000-8000-00000000dead"
    fake.inject("/tasks/", 500, times=None)
    fake.put_image(P, R, make_image(IMG, "busy", task_id=task_id))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_up", **labels()) == 1
    unknown = {"task_id": task_id, "task_type": "", "task_state": ""}
    assert value(s, "gcore_gpu_image_task_info", **labels(), **unknown) == 1
    lock_age = value(s, "gcore_gpu_image_lock_age_seconds", **labels())
    assert lock_age == 0  # counted from when the exporter first saw the lock
    assert value(s, "gcore_exporter_task_fetch_errors_total", reason="server_error") == 1


async def test_unlocking_removes_lock_series(fake: FakeGcore, exporter: ExporterFactory) -> None:
    task_id = "7a5c0000-0000-4000-8000-00000000f00d"
    fake.put_task(make_task(task_id))
    fake.put_image(P, R, make_image(IMG, "busy", task_id=task_id))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        fake.update_image(P, R, IMG, task_id=None)
        await running.round()
        s = await running.samples()
    assert value(s, "gcore_gpu_image_locked", **labels()) == 0
    assert series(s, "gcore_gpu_image_task_info") == []
    assert series(s, "gcore_gpu_image_lock_age_seconds") == []


async def test_status_set_and_unknown_status(fake: FakeGcore, exporter: ExporterFactory) -> None:
    fake.put_image(P, R, make_image(IMG, "odd", status="quarantined", size=None))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    statuses = {
        ls["status"]: v
        for (n, lset), v in s.items()
        if n == "gcore_gpu_image_status"
        for ls in [dict(lset)]
    }
    assert statuses["quarantined"] == 1
    assert sum(statuses.values()) == 1
    assert len(statuses) == 10
    assert value(s, "gcore_gpu_image_size_bytes", **labels()) is None


async def test_api_drift_old_and_new_fields(fake: FakeGcore, exporter: ExporterFactory) -> None:
    old = make_image(IMG, "old api")
    for key in ("disk_format", "hw_firmware_type", "gpu_driver", "cuda_toolkit_version", "tags"):
        del old[key]
    new = make_image(image_id(2), "new api", secure_boot=True, checksum={"sha256": "ab"})
    fake.put_image(P, R, old)
    fake.put_image(P, R, new)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_info", **labels(), disk_format="", gpu_driver="") == 1
    assert value(s, "gcore_gpu_image_up", **labels(image_id(2))) == 1


async def test_odd_names_round_trip_through_the_exposition(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    name = 'he said "hi"\\ then\nleft — ünïcødé 🚀'
    tags = [{"key": 'k"\\', "value": "line1\nline2", "read_only": False}]
    fake.put_image(P, R, make_image(IMG, name, tags=tags))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_gpu_image_info", **labels(), name=name) == 1
    assert value(s, "gcore_gpu_image_tag_info", **labels(), key='k"\\', value="line1\nline2") == 1


async def test_openmetrics_and_gzip_are_negotiated(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        async with running.http.get(running.url + "/metrics") as plain:
            assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            plain_text = await plain.text()
        accept = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5"
        async with running.http.get(
            running.url + "/metrics",
            headers={"Accept": accept, "Accept-Encoding": "gzip"},
            auto_decompress=False,
        ) as om:
            assert om.headers["Content-Type"].startswith("application/openmetrics-text")
            assert om.headers["Content-Encoding"] == "gzip"
            om_text = gzip.decompress(await om.read()).decode()
        plain_head = {"Accept-Encoding": "identity"}
        async with running.http.head(running.url + "/metrics", headers=plain_head) as head:
            assert head.status == 200
            assert int(head.headers["Content-Length"]) == len(plain_text.encode())
            assert await head.read() == b""
        await running.scrape()  # the connection is still in step: HEAD sent no body
    assert om_text.endswith("# EOF\n")
    assert "# TYPE gcore_gpu_image_fetch_errors counter" in om_text
    assert "# TYPE gcore_gpu_image_fetch_errors_total counter" in plain_text
    assert "# EOF" not in plain_text


async def test_scrapes_never_call_the_api(fake: FakeGcore, exporter: ExporterFactory) -> None:
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        before = len(fake.requests)
        for _ in range(5):
            await running.scrape()
        assert len(fake.requests) == before


async def test_scrape_during_a_stalled_poll_answers_at_once(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "x"))
    async with exporter(targets=[f"{P}/{R}/{IMG}"], timeout="30s") as running:
        release = asyncio.Event()
        fake.inject("/images/", 200, hold=release, body=make_image(IMG, "x"))
        stalled = running.scheduler.start_round()
        await wait_until(lambda: fake.in_flight == 1, what="the poll to reach the API")
        text = await asyncio.wait_for(running.scrape(), 5)  # the poll is still held
        assert "gcore_gpu_image_up" in text
        assert not stalled.done()
        release.set()
        assert (await asyncio.wait_for(stalled, 10)).ok == 1


async def test_readyz_waits_for_the_first_poll(
    fake: FakeGcore, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web

    from exporter.config.settings import load_settings
    from exporter.daemon.lifecycle import create_daemon

    monkeypatch.setenv("GCORE_API_KEY", "test-key-5f3a9c1e-SECRET")
    monkeypatch.setenv("GCORE_BASE_URL", fake_url)
    fake.put_image(P, R, make_image(IMG, "x"))
    release = asyncio.Event()
    fake.inject("/images/", 200, hold=release, body=make_image(IMG, "x"))
    settings = load_settings(targets=[f"{P}/{R}/{IMG}"], interval="1h")
    runner = web.AppRunner(create_daemon(settings, settings.read_api_key()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/readyz") as response:
                assert response.status == 503
            async with http.get(url + "/healthz") as response:
                assert response.status == 200
            release.set()

            async def ready() -> bool:
                async with http.get(url + "/readyz") as response:
                    return response.status == 200

            await wait_until(ready, timeout=5, what="/readyz")
            async with http.get(url + "/") as response:
                assert "/metrics" in await response.text()
            async with http.post(url + "/metrics") as response:
                assert response.status == 405
    finally:
        await runner.cleanup()


async def test_concurrency_caps_requests_in_flight(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.latency = 0.05
    seed(fake, 12)
    async with exporter(targets=[f"{P}/{R}/{image_id(n)}" for n in range(12)], concurrency=3):
        pass
    assert fake.peak_in_flight == 3


def test_parse_samples_rejects_duplicates() -> None:
    text = '# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n'
    with pytest.raises(AssertionError, match="duplicate"):
        parse_samples(text)


# --- every byte from the API is untrusted --------------------------------------------------------


async def test_task_ids_from_answers_never_steer_requests(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    steering = "../../v3/gpu/virtual/7/11/images?limit=1"
    fake.put_task(make_task(steering, "RUNNING"))
    fake.put_image(P, R, make_image(image_id(1), "steering", task_id=steering))
    fake.put_image(P, R, make_image(image_id(2), "dots", task_id=".."))
    fake.put_image(P, R, make_image(image_id(3), "dots too", task_id=".."))
    async with exporter(targets=[f"{P}/{R}"]) as running:
        s = await running.samples()
    task_requests = [path for path in fake.requests if "/tasks/" in path]
    assert task_requests == [
        "/cloud/v1/tasks/..%2F..%2Fv3%2Fgpu%2Fvirtual%2F7%2F11%2Fimages%3Flimit%3D1"
    ]
    assert fake.count(r"/images\?") == 1  # the one listing, nothing more
    steered = {"task_id": steering, "task_state": "RUNNING"}
    assert value(s, "gcore_gpu_image_task_info", **labels(image_id(1)), **steered) == 1
    for n in (2, 3):  # a task id that cannot be a Gcore id: not requested, the image still up
        assert value(s, "gcore_gpu_image_up", **labels(image_id(n))) == 1
        assert value(s, "gcore_gpu_image_task_info", **labels(image_id(n)), task_state="") == 1
    assert value(s, "gcore_exporter_task_fetch_errors_total", reason="invalid_response") == 1


async def test_a_deep_tasks_answer_never_fails_the_image_or_the_listing(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    task_id = "7a5c0000-0000-4000-8000-00000000deee"
    fake.inject("/tasks/", 200, body="[" * 100_000 + "]" * 100_000, times=None)
    fake.put_image(P, R, make_image(IMG, "busy", task_id=task_id))
    fake.put_image(P, R, make_image(image_id(2), "free"))
    async with exporter(targets=[f"{P}/{R}"]) as running:
        s = await running.samples()
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R)) == 1
    assert value(s, "gcore_gpu_image_up", **labels()) == 1
    assert value(s, "gcore_gpu_image_task_info", **labels(), task_id=task_id, task_state="") == 1
    assert value(s, "gcore_exporter_task_fetch_errors_total", reason="invalid_response") == 1


async def test_a_deep_listing_takes_the_scope_down_and_its_values_go_stale(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    seed(fake, 2)
    async with exporter(targets=[f"{P}/{R}"], stale_after="1h") as running:
        fake.inject(r"/images\?", 200, body="[" * 100_000 + "]" * 100_000, times=None)
        running.clock.now += 3601
        result = await running.round()
        s = await running.samples()
    assert (result.ok, result.failed) == (0, 1)
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R)) == 0
    for n in range(2):
        assert value(s, "gcore_gpu_image_up", **labels(image_id(n))) == 0
        reason = "invalid_response"
        assert value(s, "gcore_gpu_image_last_error_info", **labels(image_id(n)), reason=reason)
    assert series(s, "gcore_gpu_image_info") == []  # older than stale_after: withdrawn


async def test_an_answer_larger_than_max_response_size_fails_that_fetch(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.put_image(P, R, make_image(IMG, "big", description="x" * 4096))
    fake.put_image(P, R, make_image(image_id(2), "small"))
    targets = [f"{P}/{R}/{IMG}", f"{P}/{R}/{image_id(2)}"]
    async with exporter(targets=targets, max_response_size="4KiB") as running:
        s = await running.samples()
    reason = "invalid_response"
    assert value(s, "gcore_gpu_image_last_error_info", **labels(), reason=reason) == 1
    assert fake.count(f"/images/{IMG}") == 1  # not retried
    assert value(s, "gcore_gpu_image_up", **labels(image_id(2))) == 1


async def test_one_image_can_never_blank_the_scrape(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    tags = [
        {"key": "team", "value": "ml", "read_only": False},
        {"key": "team", "value": "ml", "read_only": False},
        {"key": "env", "value": "dev", "read_only": False},
        {"key": "env", "value": "prod", "read_only": True},
    ]
    huge = make_image(IMG, "huge", size=10**400, min_disk=10**300, min_ram=-(10**305), tags=tags)
    fake.put_image(P, R, huge)
    fake.put_image(P, R, make_image(image_id(2), "never updated", updated_at=None))
    async with exporter(targets=[f"{P}/{R}"]) as running:
        text = await running.scrape()
    s = parse_samples(text)  # fails on a duplicate series
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert value(s, "gcore_gpu_image_up", **labels()) == 1
    for family in ("size_bytes", "min_disk_bytes", "min_ram_bytes"):
        assert value(s, f"gcore_gpu_image_{family}", **labels()) is None
    assert series(s, "gcore_gpu_image_tag_info", **labels()) == [
        {**labels(), "key": "team", "value": "ml", "read_only": "false"},
        {**labels(), "key": "env", "value": "prod", "read_only": "true"},  # the last one wins
    ]
    assert value(s, "gcore_gpu_image_up", **labels(image_id(2))) == 1
    assert value(s, "gcore_gpu_image_updated_timestamp_seconds", **labels(image_id(2))) is None
    assert value(s, "gcore_gpu_image_created_timestamp_seconds", **labels(image_id(2)))


async def test_a_task_created_on_that_is_no_time_counts_the_lock_from_first_sight(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    task_id = "7a5c0000-0000-4000-8000-0000000000ee"
    fake.put_task(make_task(task_id, "RUNNING", "update_image", created_on=""))
    fake.put_image(P, R, make_image(IMG, "busy", task_id=task_id))
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        s = await running.samples()
    task = {"task_id": task_id, "task_type": "update_image", "task_state": "RUNNING"}
    assert value(s, "gcore_gpu_image_task_info", **labels(), **task) == 1
    lock_age = value(s, "gcore_gpu_image_lock_age_seconds", **labels())
    assert lock_age is not None and 0 <= lock_age < 30


@pytest.mark.parametrize(
    "claimed",
    [lambda n: n + 1, lambda n: 1, lambda n: 10**9],
    ids=["one-too-many", "fewer-than-the-results", "a-billion"],
)
async def test_a_count_that_lies_does_not_keep_a_deleted_image(
    fake: FakeGcore, exporter: ExporterFactory, claimed: Callable[[int], int]
) -> None:
    fake.max_page = 2
    fake.claimed_count = claimed
    seed(fake, 3)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        fake.remove_image(P, R, image_id(1))
        before = fake.count(r"/images\?")
        await running.round()
        s = await running.samples()
        listed = fake.count(r"/images\?") - before
    assert [ls["image_id"] for ls in series(s, "gcore_gpu_image_up")] == [image_id(0), image_id(2)]
    assert listed <= 3  # two pages, and an empty one where count disagrees
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R)) == 1


async def test_a_server_that_ignores_offset_costs_two_requests_and_removes_nothing(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    seed(fake, 4)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        first_page = {"count": 4, "results": [make_image(image_id(n), f"img-{n}") for n in (0, 1)]}
        fake.inject(r"/images\?", 200, body=first_page, times=None)
        before = fake.count(r"/images\?")
        await running.round()
        s = await running.samples()
        listed = fake.count(r"/images\?") - before
    assert listed == 2
    assert len(series(s, "gcore_gpu_image_up")) == 4  # images 2 and 3 were not proven gone
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R)) == 1


async def test_a_listing_is_bounded_by_its_count_and_then_removes_nothing(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.max_page = 2
    seed(fake, 20)
    async with exporter(targets=[f"{P}/{R}"]) as running:
        fake.claimed_count = lambda n: 3  # pages of 2 for a count of 3: 2 pages, a margin of 2
        before = fake.count(r"/images\?")
        await running.round()
        s = await running.samples()
        listed = fake.count(r"/images\?") - before
    assert listed == 4
    assert len(series(s, "gcore_gpu_image_up")) == 20


async def test_a_bug_while_listing_takes_the_scope_down_and_fails_its_unseen_images(
    fake: FakeGcore, exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.max_page = 2
    seed(fake, 4)
    listed = GcoreClient.list_pages

    async def first_page_then_a_bug(self: GcoreClient, scope: Scope) -> AsyncIterator[Page]:
        async for page in listed(self, scope):
            yield page
            raise RuntimeError("a bug")

    async with exporter(targets=[f"{P}/{R}"], stale_after="1h") as running:
        monkeypatch.setattr(GcoreClient, "list_pages", first_page_then_a_bug)
        result = await running.round()
        s = await running.samples()
    assert (result.ok, result.failed) == (0, 1)
    assert value(s, "gcore_exporter_discovery_up", project_id=str(P), region_id=str(R)) == 0
    assert [value(s, "gcore_gpu_image_up", **labels(image_id(n))) for n in range(4)] == [1, 1, 0, 0]
    reason = "invalid_response"
    assert value(s, "gcore_gpu_image_last_error_info", **labels(image_id(2)), reason=reason) == 1


async def test_three_shards_export_every_image_exactly_once(
    fake: FakeGcore, exporter: ExporterFactory
) -> None:
    fake.max_page = 50
    seed(fake, 300)
    explicit = [f"e0000000-0000-4000-8000-{n:012d}" for n in range(30)]
    for n, image in enumerate(explicit):
        task_id = f"7a5c0000-0000-4000-8000-{n:012d}"
        fake.put_task(make_task(task_id))
        fake.put_image(P, R + 1, make_image(image, f"explicit-{n}", task_id=task_id))
    targets = [f"{P}/{R}", *(f"{P}/{R + 1}/{image}" for image in explicit)]
    exported: list[list[str]] = []
    async with (
        exporter(targets=targets, shard=0, total_shards=3) as first,
        exporter(targets=targets, shard=1, total_shards=3) as second,
        exporter(targets=targets, shard=2, total_shards=3) as third,
    ):
        for running in (first, second, third):
            s = await running.samples()
            exported.append([ls["image_id"] for ls in series(s, "gcore_gpu_image_up")])
            assert [ls["image_id"] for ls in series(s, "gcore_gpu_image_info")] == exported[-1]
            assert value(s, "gcore_exporter_total_shards") == 3
            assert value(s, "gcore_exporter_shard_ordinal") == len(exported) - 1
            assert value(s, "gcore_exporter_images") == len(exported[-1])
    everything = [image_id(n) for n in range(300)] + explicit
    assert sorted(i for images in exported for i in images) == sorted(everything)
    assert all(60 <= len(images) <= 160 for images in exported), [len(i) for i in exported]
    assert fake.count(r"/images\?") == 3 * 6  # every shard pages through the whole list
    assert fake.count(r"/images/") == 30  # each explicit image is fetched by one shard
    assert fake.count("/tasks/") == 30  # and its lock looked up by that shard only
