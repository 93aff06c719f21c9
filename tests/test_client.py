"""Unit tests of the Gcore API client against aioresponses: parsing, paging, retries, rate limits.

No test waits for real: backoff goes through the client's injected `sleep`, and the rate gate runs
on a fake clock whose injected waits advance that clock instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from aioresponses.core import RequestCall
from pydantic import SecretStr
from support.mocking import Mocked
from yarl import URL

from exporter.demo.fake_gcore import make_image
from exporter.gcore.client import GcoreClient
from exporter.gcore.transport import Proxy, RateGate, RetryPolicy, Transport
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import FetchError, ImageKey, Scope

API_KEY = "sekrit-7c41e2d9-API-KEY"
BASE = "https://api.gcore.test"
P, R = 7, 11
SCOPE = Scope(P, R)
IMG = "a1b2c3d4-0000-4000-8000-000000000001"
KEY = ImageKey(SCOPE, IMG)
TASK = "d7e8f9a0-0000-4000-8000-00000000000f"
IMAGE_URL = f"{BASE}/cloud/v3/gpu/virtual/{P}/{R}/images/{IMG}"
LIST_URL = f"{BASE}/cloud/v3/gpu/virtual/{P}/{R}/images"
TASK_URL = f"{BASE}/cloud/v1/tasks/{TASK}"
_real_sleep = asyncio.sleep


def image_id(n: int) -> str:
    return f"a1b2c3d4-0000-4000-8000-{n:012d}"


def page_url(offset: int) -> str:
    return f"{LIST_URL}?limit=1000&offset={offset}"


def image_json(image: str = IMG, **fields: Any) -> dict[str, Any]:
    """A GPU image as the current API sends it, with fields the exporter does not know."""
    defaults: dict[str, Any] = {
        "updated_at": "2026-01-06T09:00:00+02:00",
        "tags": [{"key": "team", "value": "ml", "read_only": True}],
        "some_future_field": {"nested": [1, 2, 3]},
    }
    return make_image(image, "gpu-base", **{**defaults, **fields})


def task_json() -> dict[str, Any]:
    return {"id": TASK, "state": "RUNNING", "task_type": "upload_virtual_image"}


def gcore_error(message: str, request_id: str = "req-0a1b2c") -> dict[str, Any]:
    return {"exception_class": "SomeError", "message": message, "request_id": request_id}


def calls(api: aioresponses, url: str) -> list[RequestCall]:
    return api.requests.get(("GET", URL(url).with_query(sorted(URL(url).query.items()))), [])


def sent_urls(api: aioresponses) -> dict[str, int]:
    return {str(url): len(made) for (_, url), made in api.requests.items()}


def sample(telemetry: Telemetry, name: str, **labels: str) -> float | None:
    return telemetry.registry.get_sample_value(name, labels)


class FakeTime:
    """A clock for the rate gate; backoff sleeps and gate waits are recorded and advance it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.backoffs: list[float] = []
        self.gate_waits: list[float] = []
        self.gate_entered = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def backoff(self, seconds: float) -> None:
        self.backoffs.append(seconds)
        self.now += seconds

    async def gate_sleep(self, seconds: float) -> None:
        self.gate_waits.append(seconds)
        self.gate_entered.set()
        self.now += seconds
        await _real_sleep(0)


def stamp(fake_time: FakeTime, log: list[float]) -> Callable[..., None]:
    """An aioresponses callback recording the fake time at which each request was sent."""

    def callback(url: URL, **kwargs: Any) -> None:
        log.append(fake_time.now)

    return callback


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def api() -> Iterator[aioresponses]:
    with Mocked() as mocked:
        yield mocked


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


ClientFactory = Callable[..., GcoreClient]


@pytest.fixture
def make_client(
    session: aiohttp.ClientSession, telemetry: Telemetry, fake_time: FakeTime
) -> ClientFactory:
    def make(**overrides: Any) -> GcoreClient:
        options: dict[str, Any] = {
            "timeout": 5.0,
            "concurrency": 4,
            "max_response_size": 2**20,
            "telemetry": telemetry,
            "retry": RetryPolicy(),
            "gate": RateGate(fake_time.clock, fake_time.gate_sleep),
            "sleep": fake_time.backoff,
            "jitter": lambda: 0.5,
            **overrides,
        }
        return GcoreClient(Transport(session, BASE, SecretStr(API_KEY), **options))

    return make


@pytest.fixture
def client(make_client: ClientFactory) -> GcoreClient:
    return make_client()


# --- requests and parsing ------------------------------------------------------------------------


async def test_api_key_is_sent_in_authorization_header(
    api: aioresponses, client: GcoreClient
) -> None:
    api.get(IMAGE_URL, payload=image_json())
    await client.get_image(KEY)
    (call,) = calls(api, IMAGE_URL)
    assert call.kwargs["headers"]["Authorization"] == f"APIKey {API_KEY}"


async def test_a_proxys_credentials_go_with_the_connect_never_through_the_tunnel(
    api: aioresponses, make_client: ClientFactory
) -> None:
    """To Gcore (https) they are aiohttp's `proxy_headers`, sent with the CONNECT only: in the
    request's own headers the tunnel would carry them to Gcore."""
    proxy = Proxy(URL("http://proxy.internal:3128"), "Basic dXNlcjpwdw==")
    api.get(IMAGE_URL, payload=image_json())
    await make_client(proxy=proxy).get_image(KEY)
    (call,) = calls(api, IMAGE_URL)
    assert call.kwargs["proxy"] == URL("http://proxy.internal:3128")
    assert call.kwargs["proxy_headers"] == {"Proxy-Authorization": "Basic dXNlcjpwdw=="}
    assert "Proxy-Authorization" not in call.kwargs["headers"]


async def test_get_image_parses_full_image_and_ignores_unknown_fields(
    api: aioresponses, client: GcoreClient
) -> None:
    api.get(IMAGE_URL, payload=image_json())
    image = await client.get_image(KEY)
    assert image.id == IMG
    assert image.name == "gpu-base"
    assert image.status == "active"
    assert image.size == 3_221_225_472
    assert (image.min_disk, image.min_ram) == (20, 2048)
    assert image.task_id is None
    assert image.tags is not None
    assert [(t.key, t.value, t.read_only) for t in image.tags] == [("team", "ml", True)]
    assert image.gpu_driver == "nvidia"
    assert image.gpu_driver_type == "open"
    assert image.gpu_driver_version == "570.148.08"
    assert image.cuda_toolkit_version == "12.8"
    assert image.hw_firmware_type == "uefi"
    dumped = image.model_dump()
    assert "some_future_field" not in dumped
    assert "region" not in dumped


async def test_get_image_parses_old_api_image_lacking_newer_fields(
    api: aioresponses, client: GcoreClient
) -> None:
    old = {
        "id": IMG,
        "name": "legacy",
        "status": "queued",
        "created_at": "2024-03-01T10:00:00",
        "updated_at": "2024-03-01T10:05:00",
        "size": 0,
        "disk_format": "raw",
        "legacy_only_field": "whatever",
    }
    api.get(IMAGE_URL, payload=old)
    image = await client.get_image(KEY)
    assert (image.id, image.name, image.status, image.size) == (IMG, "legacy", "queued", 0)
    assert image.disk_format == "raw"
    assert image.tags is None
    assert image.min_disk is None
    assert image.gpu_driver is None
    assert image.gpu_driver_version is None
    assert image.cuda_toolkit_version is None
    assert "legacy_only_field" not in image.model_dump()


async def test_created_at_without_zone_is_utc(api: aioresponses, client: GcoreClient) -> None:
    api.get(IMAGE_URL, payload=image_json())
    image = await client.get_image(KEY)
    assert image.created_at.tzinfo is not None
    assert image.created_at.utcoffset() == timedelta(0)
    assert image.created_at == datetime(2026, 1, 5, 14, 51, 26, 570866, tzinfo=UTC)
    # a timestamp that does carry a zone keeps it
    assert image.updated_at == datetime(2026, 1, 6, 7, 0, 0, tzinfo=UTC)


async def test_image_id_mismatch_is_invalid_response(
    api: aioresponses, client: GcoreClient
) -> None:
    other = image_id(99)
    api.get(IMAGE_URL, payload=image_json(other))
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "invalid_response"
    assert IMG in info.value.message
    assert other in info.value.message


async def test_non_json_200_body_is_invalid_response_and_not_retried(
    api: aioresponses, client: GcoreClient, fake_time: FakeTime
) -> None:
    api.get(IMAGE_URL, status=200, body="<html>maintenance</html>", repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "invalid_response"
    assert len(calls(api, IMAGE_URL)) == 1
    assert fake_time.backoffs == []


# --- pagination ----------------------------------------------------------------------------------


async def test_list_images_pages_by_offset_until_count_with_limit_1000(
    api: aioresponses, client: GcoreClient
) -> None:
    ids = [image_id(n) for n in range(1, 6)]
    api.get(page_url(0), payload={"count": 5, "results": [image_json(i) for i in ids[0:2]]})
    api.get(page_url(2), payload={"count": 5, "results": [image_json(i) for i in ids[2:4]]})
    api.get(page_url(4), payload={"count": 5, "results": [image_json(i) for i in ids[4:5]]})
    pages = [page async for page in client.list_pages(SCOPE)]
    assert [image.id for page in pages for image in page.images] == ids
    assert [page.count for page in pages] == [5, 5, 5]
    assert all(page.invalid == () for page in pages)
    assert sent_urls(api) == {page_url(0): 1, page_url(2): 1, page_url(4): 1}
    for offset in (0, 2, 4):
        (call,) = calls(api, page_url(offset))
        assert call.kwargs["params"] == {"limit": 1000, "offset": offset}


async def test_pages_report_the_count_each_page_announced(
    api: aioresponses, client: GcoreClient
) -> None:
    ids = [image_id(n) for n in range(1, 6)]
    api.get(page_url(0), payload={"count": 4, "results": [image_json(i) for i in ids[0:2]]})
    api.get(page_url(2), payload={"count": 5, "results": [image_json(i) for i in ids[2:4]]})
    api.get(page_url(4), payload={"count": 5, "results": [image_json(i) for i in ids[4:5]]})
    pages = [page async for page in client.list_pages(SCOPE)]
    assert [page.count for page in pages] == [4, 5, 5]
    assert [image.id for page in pages for image in page.images] == ids


async def test_invalid_item_in_page_lands_in_invalid_with_its_id(
    api: aioresponses, client: GcoreClient
) -> None:
    good = [image_id(1), image_id(3)]
    results = [
        image_json(good[0]),
        {"id": "broken-image", "name": "half"},
        image_json(good[1]),
        "not even an object",
    ]
    api.get(page_url(0), payload={"count": 4, "results": results})
    (page,) = [page async for page in client.list_pages(SCOPE)]
    assert [image.id for image in page.images] == good
    assert [image_id for image_id, _ in page.invalid] == ["broken-image", None]
    assert "status" in page.invalid[0][1]


# --- retries -------------------------------------------------------------------------------------


async def test_server_error_then_success_is_retried(
    api: aioresponses, client: GcoreClient, telemetry: Telemetry, fake_time: FakeTime
) -> None:
    api.get(IMAGE_URL, status=500, payload=gcore_error("boom"))
    api.get(IMAGE_URL, payload=image_json())
    image = await client.get_image(KEY)
    assert image.id == IMG
    assert len(calls(api, IMAGE_URL)) == 2
    assert len(fake_time.backoffs) == 1
    assert sample(telemetry, "gcore_exporter_api_retries_total", endpoint="image") == 1
    requests = "gcore_exporter_api_requests_total"
    assert sample(telemetry, requests, endpoint="image", code="500") == 1
    assert sample(telemetry, requests, endpoint="image", code="200") == 1


async def test_html_502_is_server_error_mentioning_non_json_after_all_attempts(
    api: aioresponses, make_client: ClientFactory, telemetry: Telemetry
) -> None:
    client = make_client(retry=RetryPolicy(attempts=3))
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    api.get(IMAGE_URL, status=502, body=html, content_type="text/html", repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "server_error"
    assert info.value.status == 502
    assert "non-JSON" in info.value.message
    assert len(calls(api, IMAGE_URL)) == 3
    assert sample(telemetry, "gcore_exporter_api_retries_total", endpoint="image") == 2


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, "unauthorized"), (403, "forbidden"), (404, "not_found")],
)
async def test_client_errors_are_not_retried_and_carry_gcore_message_and_request_id(
    api: aioresponses,
    client: GcoreClient,
    telemetry: Telemetry,
    fake_time: FakeTime,
    status: int,
    reason: str,
) -> None:
    api.get(IMAGE_URL, status=status, payload=gcore_error("Nope, not you", "req-4242"), repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == reason
    assert info.value.status == status
    assert "Nope, not you" in info.value.message
    assert "Nope, not you" in str(info.value)
    assert info.value.request_id == "req-4242"
    assert info.value.log_fields()["request_id"] == "req-4242"
    assert len(calls(api, IMAGE_URL)) == 1
    assert fake_time.backoffs == []
    assert sample(telemetry, "gcore_exporter_api_retries_total", endpoint="image") == 0


async def test_408_is_retried_as_a_timeout(
    api: aioresponses, make_client: ClientFactory, telemetry: Telemetry
) -> None:
    client = make_client(retry=RetryPolicy(attempts=2))
    api.get(IMAGE_URL, status=408, payload=gcore_error("too slow"), repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "timeout"
    assert info.value.status == 408
    assert len(calls(api, IMAGE_URL)) == 2
    assert sample(telemetry, "gcore_exporter_api_retries_total", endpoint="image") == 1


async def test_timeout_has_reason_timeout_and_is_retried(
    api: aioresponses, client: GcoreClient, telemetry: Telemetry
) -> None:
    # asyncio.TimeoutError is the builtin TimeoutError since Python 3.11
    api.get(IMAGE_URL, exception=TimeoutError(), repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "timeout"
    assert info.value.status is None
    assert len(calls(api, IMAGE_URL)) == 3
    requests = "gcore_exporter_api_requests_total"
    assert sample(telemetry, requests, endpoint="image", code="timeout") == 3


async def test_timeout_then_success_is_retried(api: aioresponses, client: GcoreClient) -> None:
    api.get(IMAGE_URL, exception=TimeoutError())
    api.get(IMAGE_URL, payload=image_json())
    assert (await client.get_image(KEY)).id == IMG
    assert len(calls(api, IMAGE_URL)) == 2


async def test_connection_error_has_reason_connection_and_is_retried(
    api: aioresponses, client: GcoreClient, telemetry: Telemetry
) -> None:
    api.get(IMAGE_URL, exception=aiohttp.ClientConnectionError("connection reset"), repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "connection"
    assert "ClientConnectionError" in info.value.message
    assert len(calls(api, IMAGE_URL)) == 3
    requests = "gcore_exporter_api_requests_total"
    assert sample(telemetry, requests, endpoint="image", code="connection") == 3


async def test_retry_budget_stops_backoff_retries(
    api: aioresponses, make_client: ClientFactory, fake_time: FakeTime
) -> None:
    # delays 1, 2, 4 s (jitter 1): the third would end past the 3.5 s budget
    policy = RetryPolicy(attempts=10, backoff_base=1.0, backoff_cap=100.0, budget=3.5)
    client = make_client(retry=policy, jitter=lambda: 1.0)
    api.get(IMAGE_URL, status=503, payload=gcore_error("busy"), repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "server_error"
    assert fake_time.backoffs == [1.0, 2.0]
    assert len(calls(api, IMAGE_URL)) == 3


async def test_retry_budget_counts_a_rate_limit_pause(
    api: aioresponses, make_client: ClientFactory, fake_time: FakeTime
) -> None:
    client = make_client(retry=RetryPolicy(attempts=5, budget=60.0))
    api.get(IMAGE_URL, status=429, headers={"Retry-After": "120"}, repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "rate_limited"
    assert len(calls(api, IMAGE_URL)) == 1
    assert fake_time.backoffs == []
    assert fake_time.gate_waits == []


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [(0.0, [0.25, 0.5, 1.0, 1.0, 1.0]), (1.0, [0.5, 1.0, 2.0, 2.0, 2.0])],
)
async def test_backoff_grows_exponentially_within_half_ceiling_and_ceiling_capped(
    api: aioresponses,
    make_client: ClientFactory,
    fake_time: FakeTime,
    jitter: float,
    expected: list[float],
) -> None:
    # ceilings: 0.5, 1, 2, then capped at backoff_cap=2
    policy = RetryPolicy(attempts=6, backoff_base=0.5, backoff_cap=2.0)
    client = make_client(retry=policy, jitter=lambda: jitter)
    api.get(IMAGE_URL, status=500, repeat=True)
    with pytest.raises(FetchError):
        await client.get_image(KEY)
    assert fake_time.backoffs == pytest.approx(expected)
    assert len(calls(api, IMAGE_URL)) == 6


# --- rate limiting -------------------------------------------------------------------------------


async def test_429_retry_after_pauses_the_gate_and_the_retry_waits_at_it(
    api: aioresponses, make_client: ClientFactory, fake_time: FakeTime, telemetry: Telemetry
) -> None:
    sent_at: list[float] = []
    remaining_at_retry: list[float] = []

    async def sleep(seconds: float) -> None:
        remaining_at_retry.append(gcore.gate.remaining)
        await fake_time.backoff(seconds)

    gcore = make_client(sleep=sleep)
    api.get(IMAGE_URL, status=429, headers={"Retry-After": "7"}, callback=stamp(fake_time, sent_at))
    api.get(IMAGE_URL, payload=image_json(), callback=stamp(fake_time, sent_at))
    image = await gcore.get_image(KEY)
    assert image.id == IMG
    assert remaining_at_retry == [pytest.approx(7.0)]
    assert fake_time.backoffs == [0.0]  # the pause replaces the backoff
    assert fake_time.gate_waits == [pytest.approx(7.0)]
    assert sent_at == [0.0, pytest.approx(7.0)]
    assert sample(telemetry, "gcore_exporter_rate_limit_pauses_total") == 1
    assert sample(telemetry, "gcore_exporter_api_retries_total", endpoint="image") == 1


async def test_retry_after_as_http_date_pauses_until_then(
    api: aioresponses, make_client: ClientFactory
) -> None:
    client = make_client(retry=RetryPolicy(attempts=1))
    when = datetime.now(UTC) + timedelta(seconds=120)
    retry_after = email.utils.format_datetime(when, usegmt=True)
    api.get(IMAGE_URL, status=429, headers={"Retry-After": retry_after})
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "rate_limited"
    assert 115.0 <= client.gate.remaining <= 120.0


async def test_retry_after_above_max_pause_is_capped(
    api: aioresponses, make_client: ClientFactory
) -> None:
    client = make_client(retry=RetryPolicy(attempts=1, max_pause=30.0))
    api.get(IMAGE_URL, status=429, headers={"Retry-After": "3600"})
    with pytest.raises(FetchError):
        await client.get_image(KEY)
    assert client.gate.remaining == pytest.approx(30.0)


async def test_429_without_retry_after_still_pauses_at_least_a_second(
    api: aioresponses, make_client: ClientFactory, telemetry: Telemetry
) -> None:
    client = make_client(retry=RetryPolicy(attempts=1), jitter=lambda: 0.0)
    api.get(IMAGE_URL, status=429, payload=gcore_error("slow down"))
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert info.value.reason == "rate_limited"
    assert client.gate.remaining >= 1.0
    assert sample(telemetry, "gcore_exporter_rate_limit_pauses_total") == 1


async def test_rate_limit_pause_holds_a_concurrent_request_to_another_endpoint(
    api: aioresponses, make_client: ClientFactory, fake_time: FakeTime
) -> None:
    image_sent_at: list[float] = []
    task_sent_at: list[float] = []
    others: list[asyncio.Task[Any]] = []

    async def sleep(seconds: float) -> None:
        # right after the 429: another caller asks for a task while the image call backs off
        others.append(asyncio.create_task(gcore.get_task(TASK)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fake_time.gate_entered.wait(), 1.0)
        await fake_time.backoff(seconds)

    gcore = make_client(sleep=sleep)
    api.get(
        IMAGE_URL,
        status=429,
        headers={"Retry-After": "7"},
        callback=stamp(fake_time, image_sent_at),
    )
    api.get(IMAGE_URL, payload=image_json(), callback=stamp(fake_time, image_sent_at))
    api.get(TASK_URL, payload=task_json(), callback=stamp(fake_time, task_sent_at))
    image = await gcore.get_image(KEY)
    (other,) = others
    task = await other
    assert (image.id, task.id) == (IMG, TASK)
    assert task_sent_at == [pytest.approx(7.0)]
    assert image_sent_at == [0.0, pytest.approx(7.0)]
    assert fake_time.gate_waits == [pytest.approx(7.0)]


# --- the key never leaks -------------------------------------------------------------------------

FAILURES: dict[str, dict[str, Any]] = {
    "unauthorized": {"status": 401, "payload": gcore_error("Invalid API key")},
    "forbidden": {"status": 403, "payload": gcore_error("Forbidden")},
    "not_found": {"status": 404, "payload": gcore_error("Image not found")},
    "rate_limited": {"status": 429, "headers": {"Retry-After": "1"}},
    "server_error": {"status": 500, "body": "<html>oops</html>", "content_type": "text/html"},
    "timeout": {"exception": TimeoutError()},
    "connection": {"exception": aiohttp.ClientConnectionError("Cannot connect to host")},
    "invalid_response": {"status": 200, "body": "definitely not json"},
}


@pytest.mark.parametrize("reason", sorted(FAILURES))
async def test_api_key_never_appears_in_errors_or_client_repr(
    api: aioresponses, make_client: ClientFactory, reason: str
) -> None:
    client = make_client(retry=RetryPolicy(attempts=1))
    api.get(IMAGE_URL, **FAILURES[reason])
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    exc = info.value
    assert exc.reason == reason
    shown = [
        str(exc),
        repr(exc),
        repr(exc.log_fields()),
        "".join(traceback.format_exception(exc)),
        repr(client),
    ]
    for text in shown:
        assert API_KEY not in text


# --- listings that lie end cleanly ---------------------------------------------------------------


def page_of(count: int, ids: list[str]) -> dict[str, Any]:
    return {"count": count, "results": [image_json(i) for i in ids]}


async def listing(client: GcoreClient) -> tuple[list[str], str | None]:
    """The ids a listing brought and how it ended."""
    pages = [page async for page in client.list_pages(SCOPE)]
    assert all(page.ending is None for page in pages[:-1])
    return [image.id for page in pages for image in page.images], pages[-1].ending


async def test_a_count_too_high_ends_when_the_pages_run_out(
    api: aioresponses, client: GcoreClient
) -> None:
    ids = [image_id(n) for n in range(1, 4)]
    api.get(page_url(0), payload=page_of(4, ids[0:2]))
    api.get(page_url(2), payload=page_of(4, ids[2:3]))
    api.get(page_url(3), payload=page_of(4, []))
    assert await listing(client) == (ids, "ran_out")
    assert sent_urls(api) == {page_url(0): 1, page_url(2): 1, page_url(3): 1}


async def test_a_count_smaller_than_the_results_asks_once_more(
    api: aioresponses, client: GcoreClient
) -> None:
    ids = [image_id(n) for n in range(1, 6)]
    api.get(page_url(0), payload=page_of(2, ids))
    api.get(page_url(5), payload=page_of(2, []))
    assert await listing(client) == (ids, "ran_out")
    assert len(sent_urls(api)) == 2


async def test_a_billion_count_with_empty_pages_ends_at_the_first_empty_page(
    api: aioresponses, client: GcoreClient
) -> None:
    api.get(page_url(0), payload=page_of(10**9, [IMG]))
    api.get(page_url(1), payload=page_of(10**9, []), repeat=True)
    assert await listing(client) == ([IMG], "ran_out")
    assert sent_urls(api) == {page_url(0): 1, page_url(1): 1}


async def test_a_short_page_where_count_says_is_the_end(
    api: aioresponses, client: GcoreClient
) -> None:
    api.get(page_url(0), payload=page_of(1, [IMG]))
    assert await listing(client) == ([IMG], "ran_out")
    assert len(sent_urls(api)) == 1


async def test_a_server_that_ignores_offset_is_asked_twice(
    api: aioresponses, client: GcoreClient
) -> None:
    same = page_of(50, [image_id(1), image_id(2)])
    for offset in range(0, 60, 2):
        api.get(page_url(offset), payload=same)
    ids, ending = await listing(client)
    assert (ids, ending) == ([image_id(1), image_id(2)] * 2, "stuck")
    assert sent_urls(api) == {page_url(0): 1, page_url(2): 1}


async def test_pages_are_bounded_by_the_first_count_plus_a_margin(
    api: aioresponses, client: GcoreClient
) -> None:
    # count 3 in pages of 2 allows 2 pages, plus 2: a server inventing ids stops after 4
    for n in range(100):
        api.get(page_url(2 * n), payload=page_of(3, [image_id(2 * n), image_id(2 * n + 1)]))
    ids, ending = await listing(client)
    assert (len(ids), ending) == (8, "bounded")
    assert len(sent_urls(api)) == 4


# --- API drift (the SDK's types and retries) -----------------------------------------------------


async def test_updated_at_null_is_no_timestamp(api: aioresponses, client: GcoreClient) -> None:
    api.get(IMAGE_URL, payload=image_json(updated_at=None))
    assert (await client.get_image(KEY)).updated_at is None


@pytest.mark.parametrize("created_on", ["", "yesterday", "2026-13-45T99:00:00", None, {"a": 1}])
async def test_a_task_created_on_that_is_no_time_is_unknown(
    api: aioresponses, client: GcoreClient, created_on: Any
) -> None:
    api.get(TASK_URL, payload={**task_json(), "created_on": created_on})
    task = await client.get_task(TASK)
    assert (task.id, task.state, task.created_on) == (TASK, "RUNNING", None)


async def test_409_is_retried_as_the_sdk_does(
    api: aioresponses, client: GcoreClient, fake_time: FakeTime, telemetry: Telemetry
) -> None:
    api.get(IMAGE_URL, status=409, payload=gcore_error("lock timeout"))
    api.get(IMAGE_URL, payload=image_json())
    assert (await client.get_image(KEY)).id == IMG
    assert len(fake_time.backoffs) == 1
    assert sample(telemetry, "gcore_exporter_api_retries_total", endpoint="image") == 1


async def test_409_every_time_is_a_server_error(api: aioresponses, client: GcoreClient) -> None:
    api.get(IMAGE_URL, status=409, payload=gcore_error("lock timeout"), repeat=True)
    with pytest.raises(FetchError) as info:
        await client.get_image(KEY)
    assert (info.value.reason, info.value.status) == ("server_error", 409)
    assert "lock timeout" in info.value.message
    assert len(calls(api, IMAGE_URL)) == 3


@pytest.mark.parametrize(
    ("headers", "pause"),
    [
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "4000", "Retry-After": "90"}, 4.0),  # the SDK reads ms first
        ({"retry-after-ms": "soon", "Retry-After": "90"}, 90.0),
        ({"Retry-After-Ms": "120000"}, 120.0),
    ],
)
async def test_retry_after_ms_is_honoured(
    api: aioresponses, make_client: ClientFactory, headers: dict[str, str], pause: float
) -> None:
    client = make_client(retry=RetryPolicy(attempts=1))
    api.get(IMAGE_URL, status=429, headers=headers)
    with pytest.raises(FetchError):
        await client.get_image(KEY)
    assert client.gate.remaining == pytest.approx(pause)


async def test_429s_without_retry_after_pause_everything_with_growing_backoff(
    api: aioresponses, make_client: ClientFactory, fake_time: FakeTime, telemetry: Telemetry
) -> None:
    # jitter 1: the pause after attempt n is the full backoff ceiling of attempt n + 1
    policy = RetryPolicy(attempts=4, backoff_base=1.0, backoff_cap=100.0)
    client = make_client(retry=policy, jitter=lambda: 1.0)
    sent_at: list[float] = []
    for _ in range(3):
        api.get(IMAGE_URL, status=429, callback=stamp(fake_time, sent_at))
    api.get(IMAGE_URL, payload=image_json(), callback=stamp(fake_time, sent_at))
    assert (await client.get_image(KEY)).id == IMG
    assert fake_time.gate_waits == [2.0, 4.0, 8.0]
    assert sent_at == [0.0, 2.0, 6.0, 14.0]
    assert sample(telemetry, "gcore_exporter_rate_limit_pauses_total") == 3
