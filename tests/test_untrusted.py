"""Every byte from the API is untrusted: ids, bodies and JSON, against real loopback servers.

Each server here answers whatever its test wants and records what reached it, as sent: raw paths,
queries and whether the key came along.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from exporter.cli import main
from exporter.config.settings import ConfigError, load_settings
from exporter.demo.fake_gcore import make_image, make_task
from exporter.gcore.client import GcoreClient
from exporter.gcore.transport import RetryPolicy, Transport
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import FetchError, ImageKey, Scope

API_KEY = "sekrit-0d9e8f7a-UNTRUSTED"
SCOPE = Scope(7, 11)
IMG = "a1b2c3d4-0000-4000-8000-000000000001"
MiB = 2**20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """A request as it reached the server."""

    raw_path: str
    query: str
    authorization: str | None


@dataclass
class Loopback:
    url: str
    seen: list[Seen] = field(default_factory=list)


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Loopback]:
    """A server on 127.0.0.1 sending every request, whatever its path, to `handler`."""
    loopback = Loopback("")

    async def record(request: web.Request) -> web.StreamResponse:
        raw_path, _, query = request.raw_path.partition("?")
        loopback.seen.append(Seen(raw_path, query, request.headers.get("Authorization")))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    loopback.url = str(server.make_url("")).rstrip("/")
    try:
        yield loopback
    finally:
        await server.close()


async def not_found(request: web.Request) -> web.Response:
    return web.json_response({"message": "no such thing"}, status=404)


def answer(body: Any, status: int = 200) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handle


async def no_sleep(seconds: float) -> None:
    return None


@asynccontextmanager
async def client_for(url: str, **overrides: Any) -> AsyncIterator[GcoreClient]:
    options: dict[str, Any] = {
        "timeout": 10.0,
        "concurrency": 4,
        "max_response_size": MiB,
        "telemetry": Telemetry(),
        "retry": RetryPolicy(attempts=1),
        "sleep": no_sleep,
        **overrides,
    }
    async with aiohttp.ClientSession() as session:
        yield GcoreClient(Transport(session, url, SecretStr(API_KEY), **options))


# --- ids from answers never steer requests -------------------------------------------------------


@pytest.mark.parametrize(
    ("task_id", "sent"),
    [
        ("../../v3/gpu/virtual/7/11/images", "..%2F..%2Fv3%2Fgpu%2Fvirtual%2F7%2F11%2Fimages"),
        ("x?limit=1", "x%3Flimit%3D1"),
        ("/abs", "%2Fabs"),
        ("a#frag", "a%23frag"),
        ("%2e%2e", "%252e%252e"),
        ("ü b", "%C3%BC%20b"),
    ],
)
async def test_a_task_id_is_one_escaped_path_segment(task_id: str, sent: str) -> None:
    async with serve(not_found) as api, client_for(api.url) as client:
        with pytest.raises(FetchError) as info:
            await client.get_task(task_id)
    assert info.value.reason == "not_found"
    assert [(s.raw_path, s.query) for s in api.seen] == [(f"/cloud/v1/tasks/{sent}", "")]


@pytest.mark.parametrize("task_id", ["", ".", "..", "\ud800"])
async def test_an_id_that_cannot_be_a_gcore_id_is_never_requested(task_id: str) -> None:
    async with serve(not_found) as api, client_for(api.url) as client:
        with pytest.raises(FetchError) as info:
            await client.get_task(task_id)
        with pytest.raises(FetchError) as image_info:
            await client.get_image(ImageKey(SCOPE, task_id))
    assert api.seen == []
    for error in (info.value, image_info.value):
        assert error.reason == "invalid_response"
        assert "cannot be a Gcore id" in error.message


async def test_an_image_id_is_one_escaped_path_segment() -> None:
    async with serve(not_found) as api, client_for(api.url) as client:
        with pytest.raises(FetchError):
            await client.get_image(ImageKey(SCOPE, "../../../v1/tasks/x?y=1"))
    (seen,) = api.seen
    assert (seen.raw_path, seen.query) == (
        "/cloud/v3/gpu/virtual/7/11/images/..%2F..%2F..%2Fv1%2Ftasks%2Fx%3Fy%3D1",
        "",
    )


# --- listings ------------------------------------------------------------------------------------


async def test_a_full_last_page_is_confirmed_by_an_empty_one() -> None:
    images = [make_image(f"img-{n}", f"n{n}") for n in range(1000)]

    async def pages(request: web.Request) -> web.Response:
        offset = int(request.query["offset"])
        return web.json_response({"count": 1000, "results": images[offset : offset + 1000]})

    async with serve(pages) as api, client_for(api.url, max_response_size=32 * MiB) as client:
        listed = [page async for page in client.list_pages(SCOPE)]
    assert [len(page.images) for page in listed] == [1000, 0]
    assert listed[-1].ending == "ran_out"
    assert [s.query for s in api.seen] == ["limit=1000&offset=0", "limit=1000&offset=1000"]


# --- redirects are never followed ----------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_the_key_stays_on_the_configured_host(
    status: int,
) -> None:
    async with serve(answer(make_image(IMG, "elsewhere"))) as elsewhere:

        async def redirect(request: web.Request) -> web.Response:
            location = elsewhere.url + request.raw_path
            return web.Response(status=status, headers={"Location": location})

        async with serve(redirect) as api, client_for(api.url) as client:
            with pytest.raises(FetchError) as info:
                await client.get_image(ImageKey(SCOPE, IMG))
    assert len(api.seen) == 1
    assert elsewhere.seen == []  # not even without the key
    assert info.value.reason == "invalid_response"
    assert info.value.status == status
    assert "redirect, not followed" in info.value.message


# --- bounded bodies ------------------------------------------------------------------------------


def image_body() -> bytes:
    return json.dumps(make_image(IMG, "x")).encode()


def raw(body: bytes, **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers=headers)

    return handle


async def test_a_body_up_to_the_cap_is_read_and_one_byte_more_is_invalid() -> None:
    body = image_body()
    async with serve(raw(body)) as api:
        async with client_for(api.url, max_response_size=len(body)) as client:
            assert (await client.get_image(ImageKey(SCOPE, IMG))).id == IMG
        async with client_for(api.url, max_response_size=len(body) - 1) as client:
            with pytest.raises(FetchError) as info:
                await client.get_image(ImageKey(SCOPE, IMG))
    assert info.value.reason == "invalid_response"
    assert f"larger than {len(body) - 1} bytes (max_response_size)" in info.value.message


def bomb(decoded: int) -> bytes:
    """A gzip body of `decoded` zero bytes, made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [packer.compress(zeros) for _ in range(decoded // MiB)]
    return b"".join([*parts, packer.flush()])


async def test_a_gzip_bomb_fails_the_fetch_in_bounded_memory() -> None:
    packed = bomb(256 * MiB)
    assert len(packed) < MiB  # the cap is on decoded bytes, not on what came over the wire
    gzipped = raw(packed, **{"Content-Encoding": "gzip"})
    async with serve(gzipped) as api, client_for(api.url, max_response_size=MiB) as client:
        tracemalloc.start()
        try:
            with pytest.raises(FetchError) as info:
                await client.get_image(ImageKey(SCOPE, IMG))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert info.value.reason == "invalid_response"
    assert peak < 16 * MiB, f"peak {peak / MiB:.0f} MiB"


async def test_an_endless_stream_fails_the_fetch_long_before_the_timeout() -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            while True:
                await response.write(chunk)
        except (ConnectionError, RuntimeError):  # the client hung up
            return response

    async with serve(endless) as api, client_for(api.url, timeout=300.0) as client:
        with pytest.raises(FetchError) as info:
            await asyncio.wait_for(client.get_image(ImageKey(SCOPE, IMG)), 30)
    assert info.value.reason == "invalid_response"


async def test_a_huge_error_body_is_still_the_error_it_says() -> None:
    page = b"<html>" + b"x" * (8 * MiB) + b"</html>"

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, body=page, content_type="text/html")

    retry = RetryPolicy(attempts=2)
    async with serve(bad_gateway) as api, client_for(api.url, retry=retry) as client:
        with pytest.raises(FetchError) as info:
            await client.get_image(ImageKey(SCOPE, IMG))
    assert info.value.reason == "server_error"  # retried, as any 502
    assert len(api.seen) == 2


def test_max_response_size_accepts_bytes_and_units_from_every_source(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)
    assert load_settings(targets=["1/2"]).max_response_size == 32 * MiB
    assert load_settings(targets=["1/2"], max_response_size="4MiB").max_response_size == 4 * MiB
    assert load_settings(targets=["1/2"], max_response_size="1000").max_response_size == 1000
    config = tmp_path / "config.yaml"
    config.write_text("targets: [1/2]\nmax_response_size: 512KiB\n")
    assert load_settings(config=str(config)).max_response_size == 512 * 1024
    monkeypatch.setenv("GCORE_EXPORTER_MAX_RESPONSE_SIZE", "2 MiB")
    assert load_settings(config=str(config)).max_response_size == 2 * MiB
    assert load_settings(targets=["1/2"]).describe()["max_response_size"] == 2 * MiB


@pytest.mark.parametrize("bad", ["0", "-1", "lots", "yes"])
def test_max_response_size_refuses_what_is_no_size(
    bad: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: [1/2]\nmax_response_size: {bad}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config=str(config))
    (problem,) = info.value.problems
    assert problem.startswith("max_response_size: ")


# --- any JSON failure is an invalid response -----------------------------------------------------


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "body",
    [
        deep(100_000),
        b'{"id": ' + deep(100_000) + b"}",
        b'{"size": ' + b"9" * 5000 + b"}",  # more digits than Python converts
        b'{"name": "\xff\xfe"}',
        b"",
    ],
    ids=["deep", "deep-field", "long-integer", "not-utf8", "empty"],
)
async def test_any_body_that_does_not_decode_is_an_invalid_response(body: bytes) -> None:
    async with serve(raw(body)) as api, client_for(api.url, max_response_size=MiB) as client:
        for call in (client.get_image(ImageKey(SCOPE, IMG)), client.get_task("t-1")):
            with pytest.raises(FetchError) as info:
                await call
            assert info.value.reason == "invalid_response"


NESTED = "[" * 900 + "]" * 900


@pytest.mark.parametrize(
    "body",
    [f'{{"message": {NESTED}, "request_id": {NESTED}}}'.encode(), deep(100_000)],
    ids=["deep-fields", "too-deep"],
)
async def test_a_deep_error_body_is_still_the_error_it_says(body: bytes) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, body=body, content_type="application/json")

    async with serve(unavailable) as api, client_for(api.url) as client:
        with pytest.raises(FetchError) as info:
            await client.get_task("t-1")
    assert info.value.reason == "server_error"
    assert info.value.request_id is None


async def test_a_gzipped_answer_under_the_cap_is_read() -> None:
    packed = gzip.compress(json.dumps(make_task("t-1")).encode())
    gzipped = raw(packed, **{"Content-Encoding": "gzip"})
    async with serve(gzipped) as api, client_for(api.url) as client:
        assert (await client.get_task("t-1")).id == "t-1"


def test_the_max_response_size_flag_reaches_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)
    argv = ["--check-config", "--target", "1/2", "--max-response-size", "3MiB"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["max_response_size"] == 3 * MiB
